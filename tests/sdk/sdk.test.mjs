// The official OpenAI Node SDK against a running gotthard (started by tests/integration/test_sdk.py).
// Environment: GATEWAY_URL (e.g. http://127.0.0.1:8080/v1), OPENAI_API_KEY (any value the gateway
// accepts), SDK_MODEL (default m1, a model the gateway routes to the mock backend),
// SDK_MODELS (comma-separated ids /v1/models must list, default SDK_MODEL).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = process.env.GATEWAY_URL;
if (!baseURL) throw new Error('GATEWAY_URL is not set');
const model = process.env.SDK_MODEL || 'm1';
const expectedModels = (process.env.SDK_MODELS || model).split(',').filter(Boolean);

const client = new OpenAI({
  baseURL,
  apiKey: process.env.OPENAI_API_KEY || 'sk-dummy',
  maxRetries: 0,
  timeout: 15_000,
});

test('chat completion: content and usage', async () => {
  const { data: r, response } = await client.chat.completions
    .create({ model, messages: [{ role: 'user', content: 'hello there' }], max_tokens: 5 })
    .withResponse();
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.choices[0].message.content.trim(), 'tok0 tok1 tok2 tok3 tok4');
  assert.equal(r.choices[0].finish_reason, 'stop');
  assert.equal(r.usage.completion_tokens, 5);
  assert.ok(r.usage.prompt_tokens > 0);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(response.headers.get('x-request-id'), 'x-request-id header');
});

test('streamed chat completion: every delta in order, usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model,
    messages: [{ role: 'user', content: 'stream please' }],
    stream: true,
    max_tokens: 12,
    stream_options: { include_usage: true },
  });
  const deltas = [];
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      if (ch.delta?.content) deltas.push(ch.delta.content);
      if (ch.finish_reason) finish = ch.finish_reason;
    }
  }
  const expected = Array.from({ length: 12 }, (_, i) => `tok${i} `);
  assert.deepEqual(deltas, expected);
  assert.equal(finish, 'stop');
  assert.ok(usage, 'usage chunk');
  assert.equal(usage.completion_tokens, 12);
  assert.ok(chunks >= 13);
});

test('streamed chat completion with the stream helper: final message', async () => {
  const runner = client.chat.completions.stream({
    model,
    messages: [{ role: 'user', content: 'again' }],
    max_tokens: 4,
  });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.content, 'tok0 tok1 tok2 tok3 ');
});

test('legacy completions', async () => {
  const r = await client.completions.create({ model, prompt: 'one two', max_tokens: 3 });
  assert.equal(r.choices[0].text.trim(), 'tok0 tok1 tok2');
  assert.equal(r.usage.completion_tokens, 3);
});

test('embeddings: one vector per input, equal lengths', async () => {
  // encoding_format float: the mock backend answers floats only (the SDK's default asks for base64)
  const r = await client.embeddings.create({ model, input: ['alpha', 'beta', 'gamma'], encoding_format: 'float' });
  assert.equal(r.object, 'list');
  assert.equal(r.data.length, 3);
  const len = r.data[0].embedding.length;
  assert.ok(len > 0);
  r.data.forEach((d, i) => {
    assert.equal(d.index, i);
    assert.equal(d.embedding.length, len);
    d.embedding.forEach((v) => assert.equal(typeof v, 'number'));
  });
  assert.ok(r.usage.prompt_tokens > 0);
  const one = await client.embeddings.create({ model, input: 'alpha', encoding_format: 'float' });
  assert.deepEqual(one.data[0].embedding, r.data[0].embedding);
});

test('model list: the ids the gateway serves', async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, 'model');
    ids.push(m.id);
  }
  for (const id of expectedModels) assert.ok(ids.includes(id), `model ${id} in ${JSON.stringify(ids)}`);
});

test('unknown model: APIError 404 model_not_found', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError, `APIError, got ${err?.constructor?.name}`);
      assert.ok(err instanceof OpenAI.NotFoundError, 'NotFoundError');
      assert.equal(err.status, 404);
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, null);
      assert.ok(err.type, 'error.type');
      assert.ok(err.requestID || err.headers?.get?.('x-request-id'), 'x-request-id on the error');
      return true;
    },
  );
});

test('unknown model on a stream: APIError 404 before any chunk', async () => {
  await assert.rejects(
    (async () => {
      const s = await client.chat.completions.create({
        model: 'no-such-model',
        messages: [{ role: 'user', content: 'x' }],
        stream: true,
      });
      for await (const _ of s) { /* nothing */ }
    })(),
    (err) => err instanceof OpenAI.APIError && err.status === 404 && err.code === 'model_not_found',
  );
});
