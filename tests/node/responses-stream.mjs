// `streamText` through `@ai-sdk/openai`'s default provider (the Responses API), with the weather tool:
// the SDK runs the tool's `execute`, sends its result back as a `function_call_output` item and reads
// the final text, in up to `--steps` steps (1: a plain streamed answer, no tools).
import { stepCountIs, streamText, tool } from 'ai';
import { options, recordingFetch, run } from './common.mjs';
import { collect } from './ai-sdk.mjs';
import { responseIds, responsesModel } from './responses.mjs';
import { forecast, WEATHER_DESCRIPTION, WEATHER_TOOL, weatherInput } from './weather.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Use get_weather to tell me the weather in Oslo.' },
  steps: { type: 'string', default: '2' },
});
const { fetch, requests } = recordingFetch();
const executed = [];
const steps = Number(opts.steps);

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
    model: responsesModel(opts, fetch),
    ...(steps > 1 ? { tools: { [WEATHER_TOOL]: getWeather }, toolChoice: 'auto' } : {}),
    stopWhen: stepCountIs(steps),
    prompt: opts.prompt,
    maxRetries: 0,
  });
  const collected = await collect(result);
  return { ...collected, executed, usage: await result.totalUsage, responseIds: responseIds(await result.steps) };
}, requests);
