// Runs the component under Node with jco against the test provider server
// (OPENAI_BASE_URL, started by `cargo xtask test`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { config, generate } from './batchgen.mjs';
import { batchGenerator } from './gen/batchgen.js';

test('a batch goes to the provider over wasi:http, one result per input in order', () => {
  assert.ok(process.env.OPENAI_BASE_URL, 'OPENAI_BASE_URL names the test server');
  const inputs = ['first row', 'second row', 'third row'];
  const results = generate(config({ systemPrompt: 'S', maxTokens: 64 }), inputs);
  assert.equal(results.length, inputs.length);
  results.forEach((result, i) => {
    assert.equal(result.tag, 'ok', JSON.stringify(result));
    assert.equal(result.val.text, `[S] echo: ${inputs[i]}`);
    assert.equal(result.val.finishReason, 'stop');
    assert.equal(result.val.attempts, 1);
  });
});

test('Local goes to the JS local-model import', () => {
  const results = generate(config({ generationModel: 'Local' }), ['a', 'b']);
  assert.deepEqual(results.map((r) => r.val.text), ['local: a', 'local: b']);
});

test('a bad config is refused by the component, naming the field', () => {
  assert.throws(() => generate(config({ temperature: 3 }), ['x']), /temperature/);
});

test('a prompt template renders the same under Node as in batchgen', () => {
  const cfg = config({ promptTemplate: 'Translate {{ text }} into {{ language }} ({{ n }}, {{ tags }})' });
  assert.deepEqual(batchGenerator.templateColumns(cfg), ['language', 'n', 'tags', 'text']);
  const rows = [JSON.stringify({ text: 'héllo', language: 'French', n: 2, tags: ['a', 'b'] })];
  const prompts = batchGenerator.renderPrompts(cfg, rows);
  assert.deepEqual(prompts, [{ tag: 'ok', val: 'Translate héllo into French (2, ["a","b"])' }]);
});
