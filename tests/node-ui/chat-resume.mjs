// Send a message, lose the connection mid-answer, and resume the answer with the chat client.
import { openChat, options, report, run, textDeltas } from './chat-client.mjs';

const opts = options({ message: { type: 'string', default: 'Tell me about streaming' } });

run(async () => {
  const { chat, recorder } = openChat(opts);
  recorder.dropWhen = (raw) => textDeltas(raw) >= 2;
  await chat.sendMessage({ text: opts.message });
  const dropped = { status: chat.status, error: chat.error?.message ?? null, messages: structuredClone(chat.messages) };
  await chat.resumeStream();
  return report(chat, recorder, { dropped });
});
