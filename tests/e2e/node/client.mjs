// Node's official `openai` package against a running mmserve: chat (whole and streamed) and
// embeddings (text and token arrays). Prints what it saw as one JSON object, for
// tests/e2e/test_clients.py to judge. Usage: node client.mjs BASE_URL
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello" }];

const reply = await client.chat.completions.create({ model: "smollm2", messages, max_tokens: 8 });

const stream = await client.chat.completions.create({
  model: "smollm2",
  messages,
  max_tokens: 8,
  stream: true,
  stream_options: { include_usage: true },
});
const chunks = [];
for await (const chunk of stream) {
  chunks.push(chunk);
}

// The client asks for base64 by default and decodes it itself.
const text = await client.embeddings.create({ model: "minilm", input: "hello world" });
const tokens = await client.embeddings.create({ model: "minilm", input: [7592, 2088] });

let outOfVocabulary = null;
try {
  await client.embeddings.create({ model: "minilm", input: [[100256]] });
} catch (error) {
  outOfVocabulary = { status: error.status, message: error.message };
}

console.log(
  JSON.stringify({
    message: reply.choices[0].message,
    usage: reply.usage,
    deltas: chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta),
    created: [...new Set(chunks.map((c) => c.created))],
    lastUsage: chunks[chunks.length - 1].usage,
    text: text.data[0].embedding,
    tokens: tokens.data[0].embedding,
    outOfVocabulary,
  }),
);
