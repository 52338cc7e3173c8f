"""Tiny GGUF models of the architectures users pick that no small model on a
registry this project reaches carries: Qwen 2, Qwen 3 and Phi-3.

Each is the real architecture (its tensors, shapes, hyperparameters, tokenizer
kind and chat template, as llama.cpp's loader expects them) at a toy size with
seeded random weights, quantized to Q8_0 as real files' matrices are, written
by `gguf`, llama.cpp's own GGUF writer. Their text is gibberish; what they show
is that the embedded engine loads, prompts and batches each architecture, and
that a row's text does not depend on its batch, as the real files' would.
"""

from pathlib import Path

import gguf
import numpy as np

EMBD, HEADS, KV_HEADS, FF, LAYERS, CONTEXT = 64, 4, 2, 128, 2, 512
HEAD = EMBD // HEADS
KV = KV_HEADS * HEAD

# What llama.cpp recognises each family's template by (llama-chat.cpp):
# ChatML's markers for Qwen, `<|assistant|>` and `<|end|>` for Phi-3. The
# engine formats prompts with llama.cpp's built-in form of the template it
# detects, so the markers are what matters, as in the real files.
QWEN_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

ARCHITECTURES = ["qwen2", "qwen3", "phi3"]


def write(path: Path, arch: str, seed: int = 7) -> Path:
    """Writes the toy `arch` model to `path`."""
    rng = np.random.default_rng(seed)

    def weight(*shape):
        # numpy's shape is ggml's reversed: (out, in) is a product from in to out.
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), arch)

    def matrix(name, out, inputs):
        # Quantized, so that the products go through llama.cpp's quantized
        # kernels, as with a real Q8_0 or Q4_K_M file.
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(weight(out, inputs), q8), raw_dtype=q8)

    writer.add_name(f"tiny-{arch}")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBD)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    if arch == "phi3":
        writer.add_rope_dimension_count(HEAD)
        vocab = _spm_vocab(writer)
        writer.add_chat_template(PHI3_TEMPLATE)
    else:
        vocab = _bpe_vocab(writer)
        writer.add_chat_template(QWEN_TEMPLATE)

    matrix("token_embd.weight", vocab, EMBD)
    writer.add_tensor("output_norm.weight", ones(EMBD))
    matrix("output.weight", vocab, EMBD)
    for i in range(LAYERS):
        block = f"blk.{i}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones(EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones(EMBD))
        matrix(f"{block}.attn_output.weight", EMBD, EMBD)
        matrix(f"{block}.ffn_down.weight", EMBD, FF)
        if arch == "phi3":
            # Phi-3 fuses Q, K and V into one product, and gate and up into another.
            matrix(f"{block}.attn_qkv.weight", EMBD + 2 * KV, EMBD)
            matrix(f"{block}.ffn_up.weight", 2 * FF, EMBD)
            continue
        matrix(f"{block}.attn_q.weight", EMBD, EMBD)
        matrix(f"{block}.attn_k.weight", KV, EMBD)
        matrix(f"{block}.attn_v.weight", KV, EMBD)
        matrix(f"{block}.ffn_gate.weight", FF, EMBD)
        matrix(f"{block}.ffn_up.weight", FF, EMBD)
        if arch == "qwen2":
            # Qwen 2 has biases on Q, K and V.
            writer.add_tensor(f"{block}.attn_q.bias", weight(EMBD))
            writer.add_tensor(f"{block}.attn_k.bias", weight(KV))
            writer.add_tensor(f"{block}.attn_v.bias", weight(KV))
        else:
            # Qwen 3 normalises each head's queries and keys instead.
            writer.add_tensor(f"{block}.attn_q_norm.weight", ones(HEAD))
            writer.add_tensor(f"{block}.attn_k_norm.weight", ones(HEAD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _bpe_vocab(writer: "gguf.GGUFWriter") -> int:
    """Qwen's tokenizer kind (GPT-2 byte-level BPE, Qwen's pre-tokenizer):
    the 256 byte tokens, a few merges, and ChatML's control tokens."""
    # GPT-2's printable stand-in for each byte, as its vocabularies spell them.
    byte_chars = gguf.vocab.bytes_to_unicode()
    tokens = [byte_chars[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "i n", "e r"]
    tokens += [a + b for a, b in (m.split(" ") for m in merges)]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    return len(tokens)


def _spm_vocab(writer: "gguf.GGUFWriter") -> int:
    """Phi-3's tokenizer kind (SentencePiece, as Llama 2's): the unknown,
    start and end tokens, the byte-fallback tokens, a few pieces, and Phi-3's
    chat control tokens."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁", "▁the", "e", "t", "a", "o", "n"]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    specials = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"]
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    scores = [0.0] * len(tokens)
    for i, piece in enumerate(pieces):
        scores[tokens.index(piece)] = -float(i)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(tokens.index("<|end|>"))
    writer.add_unk_token_id(0)
    return len(tokens)

