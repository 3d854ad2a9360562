// Scenario (c): structured output. `generateObject` with a zod schema (the provider says it supports
// structured outputs, so the SDK sends `response_format: json_schema`); the SDK parses the answer and
// checks it against the schema. `--api output` does the same through `generateText` with
// `output: Output.object(...)`, the form the SDK's docs now recommend.
import { generateObject, generateText, Output } from 'ai';
import { z } from 'zod';
import { options, recordingFetch, run } from './common.mjs';
import { serviceModel } from './ai-sdk.mjs';

const opts = options({
  prompt: { type: 'string', default: 'Give me a recipe for a vegetable soup.' },
  api: { type: 'string', default: 'generateObject' },
});
const { fetch, requests } = recordingFetch();

const recipe = z.object({
  name: z.string().min(1),
  servings: z.number().int().min(1).max(12),
  vegetarian: z.boolean(),
  ingredients: z
    .array(z.object({ item: z.string().min(1), grams: z.number().positive() }))
    .min(1),
});

await run(async () => {
  const model = serviceModel(opts, fetch);
  if (opts.api === 'output') {
    const result = await generateText({
      model,
      output: Output.object({ schema: recipe, name: 'recipe' }),
      prompt: opts.prompt,
      maxRetries: 0,
    });
    return { object: result.output, finishReason: result.finishReason };
  }
  const result = await generateObject({
    model,
    schema: recipe,
    schemaName: 'recipe',
    prompt: opts.prompt,
    maxRetries: 0,
  });
  return { object: result.object, finishReason: result.finishReason };
}, requests);
