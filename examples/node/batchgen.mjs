// A minimal JS host for the batchgen component (transpiled by jco into
// ./gen): build a config, check it, generate a batch.
//
// wasi:http comes from @bytecodealliance/preview2-shim, which offers no
// hook to add headers to a component's requests or to deny them. This host
// therefore sends no API key (the component never holds one): point it at
// a server that needs none (a local OpenAI-compatible server, the test
// server) or at a proxy that adds the key.
import { batchGenerator } from './gen/batchgen.js';

export function config(overrides = {}) {
  return {
    generationModel: 'OpenAI GPT 4o Mini',
    modelId: undefined,
    systemPrompt: undefined,
    temperature: 0.01,
    topP: 1.0,
    maxTokens: 1024,
    batchSize: 128,
    maxAttempts: 5,
    requestTimeoutMs: 600_000n,
    endpoints: {
      openaiBaseUrl: process.env.OPENAI_BASE_URL ?? 'https://api.openai.com/v1',
      anthropicBaseUrl: process.env.ANTHROPIC_BASE_URL ?? 'https://api.anthropic.com',
      // Empty: `Local` is this host's `local-model` import (local-model.js).
      localBaseUrls: [],
    },
    // A Jinja template over a row's columns; render it with
    // batchGenerator.renderPrompts and pass the prompts as inputs.
    promptTemplate: undefined,
    ...overrides,
  };
}

export function generate(cfg, inputs) {
  const problems = batchGenerator.checkConfig(cfg);
  if (problems.length > 0) {
    throw new Error(problems.map((p) => `${p.field}: ${p.message}`).join('; '));
  }
  return batchGenerator.generateBatch(cfg, inputs);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const inputs = process.argv.slice(2);
  const results = generate(config({ generationModel: process.env.MODEL ?? 'Local' }), inputs.length ? inputs : ['Hello']);
  console.log(JSON.stringify(results, (_, v) => (typeof v === 'bigint' ? Number(v) : v), 2));
}
