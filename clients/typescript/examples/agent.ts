// A TypeScript agent that keeps its conversation in Amber, keyed by a stable conversation id, so any
// process (or a restart, or the next serverless invocation) continues where the last one stopped.
// Run with a TypeScript runner (tsx, deno, bun); `callModel` stands in for your model client.
import { AmberClient, type MessageOut } from "@amber-memory/client";

const amber = new AmberClient({ baseUrl: process.env.AMBER_URL ?? "http://127.0.0.1:8750", apiKey: process.env.AMBER_API_KEY! });

async function callModel(history: MessageOut[], userText: string): Promise<string> {
  return `(${history.length} earlier messages) you said: ${userText}`; // replace with a real model call
}

export async function handleTurn(customerId: string, conversationId: string, userText: string, requestId: string) {
  // Derive the thread from your domain (ticket, claim, chat id): a random id per request starts an empty conversation.
  const session = amber.session(customerId, conversationId);
  const history = await session.window({ maxTokens: 6000 });
  // The request id doubles as the idempotency key: a retried HTTP request stores the turn once.
  await session.append({ role: "user", content: userText }, { idempotencyKey: `${requestId}:user` });
  const reply = await callModel(history, userText);
  await session.append({ role: "assistant", content: reply, author: "support" }, { idempotencyKey: `${requestId}:assistant` });
  return reply;
}
