// Scenario: an agent turn with a tool call, as an AG-UI frontend runs it. HttpAgent runs the thread
// with a tool; the (simulated) model calls it because the message names it; the client answers the
// call with a `tool` message, as frontend tools do, and runs again to get the final text.
import { randomUUID } from 'node:crypto';
import { agent as makeAgent, options, recorder, run } from './common.mjs';

const opts = options({
  prompt: { type: 'string', default: 'What is the weather in Kyoto? Please use get_weather.' },
  result: { type: 'string', default: '{"station": "WX-4471", "sky": "clear", "celsius": 18}' },
});

const WEATHER = {
  name: 'get_weather',
  description: 'The current weather in a city.',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string', description: 'The city' } },
    required: ['city'],
  },
};

await run(async () => {
  const agent = makeAgent(opts);
  agent.addMessage({ id: randomUUID(), role: 'user', content: opts.prompt });

  const first = recorder();
  const calling = await agent.runAgent({ tools: [WEATHER] }, first.subscriber);
  const asked = agent.messages.filter((m) => m.role === 'assistant' && m.toolCalls?.length).at(-1);
  if (!asked) {
    throw new Error(`no tool call in ${JSON.stringify(agent.messages)}`);
  }
  const call = asked.toolCalls[0];
  agent.addMessage({ id: randomUUID(), role: 'tool', toolCallId: call.id, content: opts.result });

  const second = recorder();
  const answered = await agent.runAgent({ tools: [WEATHER] }, second.subscriber);
  const answer = agent.messages.filter((m) => m.role === 'assistant').at(-1);
  return {
    call: { id: call.id, name: call.function.name, arguments: JSON.parse(call.function.arguments) },
    firstEvents: first.events,
    firstResult: calling.result ?? null,
    secondEvents: second.events,
    secondResult: answered.result ?? null,
    answer: answer.content,
    messages: agent.messages,
  };
});
