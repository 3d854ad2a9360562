// `generateText` through `@ai-sdk/openai`'s default provider (the Responses API): one answer, whole;
// with `--follow-up`, a second turn after it, sent as the SDK sends a conversation (its earlier answer
// as an `item_reference` to the output item, since the provider's `store` is on by default).
import { generateText } from 'ai';
import { options, recordingFetch, run } from './common.mjs';
import { responseIds, responsesModel } from './responses.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Tell me about Redis streams.' },
  system: { type: 'string', default: 'Answer in one paragraph.' },
  'follow-up': { type: 'string' },
});
const { fetch, requests } = recordingFetch();

await run(async () => {
  const result = await generateText({
    model: responsesModel(opts, fetch),
    system: opts.system,
    prompt: opts.prompt,
    maxRetries: 0,
  });
  let followUp = null;
  if (opts['follow-up']) {
    const next = await generateText({
      model: responsesModel(opts, fetch),
      messages: [
        { role: 'user', content: opts.prompt },
        ...result.response.messages,
        { role: 'user', content: opts['follow-up'] },
      ],
      maxRetries: 0,
    });
    followUp = { text: next.text, finishReason: next.finishReason, responseId: next.response.id };
  }
  return {
    followUp,
    text: result.text,
    finishReason: result.finishReason,
    usage: result.usage,
    reasoningText: result.reasoningText ?? null,
    responseId: result.response.id,
    responseIds: responseIds(result.steps),
  };
}, requests);
