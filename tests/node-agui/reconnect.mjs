// Scenario: a page reloaded while an answer streams. A new agent for the same thread calls
// connectAgent(): it gets the thread's messages as a MESSAGES_SNAPSHOT, then the running answer live.
import { agent as makeAgent, options, recorder, run } from './common.mjs';

const opts = options();

await run(async () => {
  const agent = makeAgent(opts);
  const { events, subscriber } = recorder();
  const connected = await agent.connectAgent({}, subscriber);
  return { events, messages: agent.messages, result: connected.result ?? null };
});
