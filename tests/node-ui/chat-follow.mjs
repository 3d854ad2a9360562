// Follow a chat's running answer that another client started, with the chat client's resume (what
// `useChat({ resume: true })` does on a page load); `--ready-file` is written once its first text
// delta has arrived, so a test can act (stop the answer, say) while this client is surely reading.
import { writeFileSync } from 'node:fs';
import { openChat, options, report, run, textDeltas, until } from './chat-client.mjs';

const opts = options({ 'ready-file': { type: 'string' } });

run(async () => {
  const { chat, recorder } = openChat(opts);
  const reading = chat.resumeStream();
  await until(() => textDeltas(recorder.exchanges[0]?.raw ?? '') >= 1, 'text in the resumed stream');
  if (opts['ready-file']) writeFileSync(opts['ready-file'], 'reading');
  await reading;
  return report(chat, recorder);
});
