// Send a message with the SDK's chat client; once answered, resume (nothing runs: 204).
import { openChat, options, report, run } from './chat-client.mjs';

const opts = options({ message: { type: 'string', default: 'Hello there' } });

run(async () => {
  const { chat, recorder } = openChat(opts);
  await chat.sendMessage({ text: opts.message });
  const answered = { status: chat.status, error: chat.error?.message ?? null, count: chat.messages.length };
  await chat.resumeStream(); // the answer has ended: the service answers 204, the chat stays as it is
  return report(chat, recorder, { answered });
});
