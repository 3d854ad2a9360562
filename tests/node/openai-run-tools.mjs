// Scenario (d2): the `openai` package's `chat.completions.runTools()` with a tool made by `zodFunction`.
// The runner calls the model, parses each tool call's arguments with the zod schema, calls the function,
// sends its result back as a `tool` message and repeats until the model answers with text. `--stream`
// runs the same loop on streamed completions.
import OpenAI from 'openai';
import { zodFunction } from 'openai/helpers/zod';
import { options, recordingFetch, run } from './common.mjs';
import { forecast, WEATHER_DESCRIPTION, WEATHER_TOOL, weatherInput } from './weather.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Use get_weather to tell me the weather in Oslo.' },
  stream: { type: 'boolean', default: false },
});
const { fetch, requests } = recordingFetch();
const called = [];

const getWeather = zodFunction({
  name: WEATHER_TOOL,
  description: WEATHER_DESCRIPTION,
  parameters: weatherInput,
  function: async (input) => {
    called.push(input);
    return forecast(input);
  },
});

await run(async () => {
  const client = new OpenAI({ baseURL: opts.v1, apiKey: opts['api-key'], maxRetries: 0, fetch });
  const runner = client.chat.completions.runTools(
    {
      model: opts.model,
      messages: [{ role: 'user', content: opts.prompt }],
      tools: [getWeather],
      stream: opts.stream,
    },
    { maxChatCompletions: 4 },
  );
  const content = await runner.finalContent();
  return {
    content,
    called,
    messages: runner.messages,
    completions: runner.allChatCompletions().map((c) => ({
      finishReason: c.choices[0]?.finish_reason ?? null,
      toolCalls: (c.choices[0]?.message?.tool_calls ?? []).map((t) => ({ id: t.id, ...t.function })),
    })),
  };
}, requests);
