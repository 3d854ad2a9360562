// A client-side tool with the chat client: the answer calls it, `onToolCall` adds its output with
// `addToolOutput`, and `sendAutomaticallyWhen` posts it back, which continues the same UI message.
// `--drop-continuation` loses the continuing answer's connection and resumes it.
import { lastAssistantMessageIsCompleteWithToolCalls } from 'ai';
import { openChat, options, report, run, textDeltas } from './chat-client.mjs';

const opts = options({
  message: { type: 'string', default: 'What is the weather in Paris? Please call get_weather.' },
  'drop-continuation': { type: 'boolean', default: false },
});

// The tool in OpenAI's function shape, as POST /chat takes it (the transport's `body` carries it).
const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The current weather in a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};

run(async () => {
  const calls = [];
  const { chat, recorder } = openChat(opts, {
    body: { tools: [WEATHER] },
    sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls,
    onToolCall: ({ toolCall }) => {
      calls.push(toolCall);
      if (opts['drop-continuation']) {
        recorder.dropWhen = (raw) => textDeltas(raw) >= 1; // the next request: the continuation
      }
      // Not awaited: the SDK documents that awaiting addToolOutput in onToolCall deadlocks.
      void chat.addToolOutput({
        tool: toolCall.toolName,
        toolCallId: toolCall.toolCallId,
        output: { station: 'WX-4471', city: toolCall.input.city, temperature_c: 21, sky: 'clear' },
      });
    },
  });
  await chat.sendMessage({ text: opts.message });
  const beforeResume = { status: chat.status, error: chat.error?.message ?? null };
  if (opts['drop-continuation']) {
    await chat.resumeStream();
  }
  return report(chat, recorder, { calls, beforeResume });
});
