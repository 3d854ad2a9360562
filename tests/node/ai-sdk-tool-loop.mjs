// Scenario (b): `streamText` with `toolChoice: "auto"` on a message naming the tool. The SDK runs the
// tool's `execute`, sends its result back (a `tool` message after the assistant's `tool_calls`) and
// reads the model's final text: two steps, as `stopWhen: stepCountIs(2)` allows.
import { stepCountIs, streamText, tool } from 'ai';
import { options, recordingFetch, run } from './common.mjs';
import { collect, serviceModel } from './ai-sdk.mjs';
import { forecast, WEATHER_DESCRIPTION, WEATHER_TOOL, weatherInput } from './weather.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Use get_weather to tell me the weather in Oslo.' },
});
const { fetch, requests } = recordingFetch();
const executed = [];

const getWeather = tool({
  description: WEATHER_DESCRIPTION,
  inputSchema: weatherInput,
  execute: async (input) => {
    executed.push(input);
    return forecast(input);
  },
});

await run(async () => {
  const result = streamText({
    model: serviceModel(opts, fetch),
    tools: { [WEATHER_TOOL]: getWeather },
    toolChoice: 'auto',
    stopWhen: stepCountIs(2),
    prompt: opts.prompt,
    maxRetries: 0,
  });
  return { ...(await collect(result)), executed };
}, requests);
