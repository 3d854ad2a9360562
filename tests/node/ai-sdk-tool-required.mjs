// Scenario (a): `streamText` with one tool and `toolChoice: "required"`. The model must call it; the
// SDK checks the call's input against the zod schema. The tool has no `execute`: the calls are the
// result, as for an app that runs tools elsewhere.
import { streamText, tool } from 'ai';
import { options, recordingFetch, run } from './common.mjs';
import { collect, serviceModel } from './ai-sdk.mjs';
import { WEATHER_DESCRIPTION, WEATHER_TOOL, weatherInput } from './weather.mjs';

const opts = options({ prompt: { type: 'string', default: 'Plan my week in Lisbon.' } });
const { fetch, requests } = recordingFetch();

await run(async () => {
  const result = streamText({
    model: serviceModel(opts, fetch),
    tools: { [WEATHER_TOOL]: tool({ description: WEATHER_DESCRIPTION, inputSchema: weatherInput }) },
    toolChoice: 'required',
    prompt: opts.prompt,
    maxRetries: 0,
  });
  return collect(result);
}, requests);
