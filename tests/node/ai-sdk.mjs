// The Vercel AI SDK's side of the scenarios: the service as an OpenAI-compatible provider, and what a
// user reads off a `streamText` result.
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { describeError } from './common.mjs';

/** The service as a user configures it: `createOpenAICompatible` on its /v1 base URL. */
export function serviceModel(opts, fetch) {
  const provider = createOpenAICompatible({
    name: 'chat-service',
    baseURL: opts.v1,
    apiKey: opts['api-key'],
    // Without it the SDK sends `json_object` and no schema: the service's structured output path
    // (`response_format: json_schema`) is the one under test.
    supportsStructuredOutputs: true,
    fetch,
  });
  return provider(opts.model);
}

function toolCallOf(part) {
  return {
    id: part.toolCallId,
    name: part.toolName,
    input: part.input,
    // The SDK marks a call whose input failed the zod schema (or names no tool) as invalid.
    invalid: part.invalid === true,
    error: part.error === undefined ? null : describeError(part.error),
  };
}

/**
 * Read a `streamText` result as a user's code does: every part of `fullStream`, then the step results
 * and the final text and finish reason.
 */
export async function collect(result) {
  const parts = {};
  const toolCalls = [];
  const toolResults = [];
  const problems = [];
  let streamedText = '';
  for await (const part of result.fullStream) {
    parts[part.type] = (parts[part.type] ?? 0) + 1;
    if (part.type === 'text-delta') {
      streamedText += part.text;
    } else if (part.type === 'tool-call') {
      toolCalls.push(toolCallOf(part));
    } else if (part.type === 'tool-result') {
      toolResults.push({ id: part.toolCallId, name: part.toolName, output: part.output });
    } else if (part.type === 'tool-error' || part.type === 'error') {
      problems.push({ type: part.type, error: describeError(part.error) });
    }
  }
  const steps = (await result.steps).map((step) => ({
    finishReason: step.finishReason,
    rawFinishReason: step.rawFinishReason ?? null,
    text: step.text,
    toolCalls: step.toolCalls.map(toolCallOf),
    toolResults: step.toolResults.map((r) => ({ id: r.toolCallId, name: r.toolName, output: r.output })),
  }));
  return {
    parts,
    toolCalls,
    toolResults,
    problems,
    streamedText,
    steps,
    text: await result.text,
    finishReason: await result.finishReason,
  };
}
