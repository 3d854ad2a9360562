// The Vercel AI SDK's default OpenAI provider (`@ai-sdk/openai`), which speaks the Responses API: the
// service as a user configures it (`createOpenAI` on its /v1 base URL), and what a scenario reports.
import { createOpenAI } from '@ai-sdk/openai';

/** `provider(model)`: the provider's default, the Responses API (`/v1/responses`). */
export function responsesModel(opts, fetch) {
  const provider = createOpenAI({ baseURL: opts.v1, apiKey: opts['api-key'], fetch });
  return provider(opts.model);
}

/** The response ids the SDK read (its `providerMetadata.openai.responseId` per step). */
export function responseIds(steps) {
  return steps.map((step) => step.providerMetadata?.openai?.responseId ?? null);
}
