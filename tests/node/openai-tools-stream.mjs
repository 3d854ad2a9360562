// Scenario (d1): the `openai` package's `chat.completions.create` with a tool, streamed. The tool calls
// are put together from their deltas by `index`, as OpenAI's docs show: the first delta of a call
// carries its id, type and function name, the following ones pieces of its arguments.
import OpenAI from 'openai';
import { z } from 'zod';
import { options, recordingFetch, run } from './common.mjs';
import { WEATHER_DESCRIPTION, WEATHER_TOOL, weatherInput } from './weather.mjs';

const opts = options({
  prompt: { type: 'string', default: 'What is the weather like in Kyoto?' },
  'tool-choice': { type: 'string', default: 'required' },
});
const { fetch, requests } = recordingFetch();

function accumulate(calls, delta) {
  const call = (calls[delta.index] ??= { index: delta.index, id: null, type: null, name: '', arguments: '' });
  call.deltas = (call.deltas ?? 0) + 1;
  call.id ??= delta.id ?? null;
  call.type ??= delta.type ?? null;
  call.name += delta.function?.name ?? '';
  call.arguments += delta.function?.arguments ?? '';
}

function parsed(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

await run(async () => {
  const client = new OpenAI({ baseURL: opts.v1, apiKey: opts['api-key'], maxRetries: 0, fetch });
  const stream = await client.chat.completions.create({
    model: opts.model,
    messages: [{ role: 'user', content: opts.prompt }],
    tools: [
      {
        type: 'function',
        function: {
          name: WEATHER_TOOL,
          description: WEATHER_DESCRIPTION,
          parameters: z.toJSONSchema(weatherInput),
        },
      },
    ],
    tool_choice: opts['tool-choice'],
    stream: true,
  });
  const calls = [];
  let content = '';
  let finishReason = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices) {
      content += choice.delta?.content ?? '';
      for (const delta of choice.delta?.tool_calls ?? []) {
        accumulate(calls, delta);
      }
      finishReason = choice.finish_reason ?? finishReason;
    }
  }
  const toolCalls = calls.filter(Boolean).map((call) => ({ ...call, input: parsed(call.arguments) }));
  return { chunks, content, toolCalls, finishReason };
}, requests);
