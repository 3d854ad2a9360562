// `generateText` through `@ai-sdk/openai`'s default provider (the Responses API): one answer, whole.
import { generateText } from 'ai';
import { options, recordingFetch, run } from './common.mjs';
import { responseIds, responsesModel } from './responses.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Tell me about Redis streams.' },
  system: { type: 'string', default: 'Answer in one paragraph.' },
});
const { fetch, requests } = recordingFetch();

await run(async () => {
  const result = await generateText({
    model: responsesModel(opts, fetch),
    system: opts.system,
    prompt: opts.prompt,
    maxRetries: 0,
  });
  return {
    text: result.text,
    finishReason: result.finishReason,
    usage: result.usage,
    reasoningText: result.reasoningText ?? null,
    responseId: result.response.id,
    responseIds: responseIds(result.steps),
  };
}, requests);
