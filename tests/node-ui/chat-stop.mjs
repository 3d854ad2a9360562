// Stop an answer through POST /api/chat/{id}/stop while the chat client reads it: from the first POST's
// stream (`--via post`), or from a stream resumed after a dropped connection (`--via resume`).
import { keyHeaders, openChat, options, report, run, textDeltas, until } from './chat-client.mjs';

const opts = options({
  message: { type: 'string', default: 'Tell me about streaming' },
  via: { type: 'string', default: 'post' },
});

run(async () => {
  const { chat, recorder } = openChat(opts);
  let reading;
  if (opts.via === 'resume') {
    recorder.dropWhen = (raw) => textDeltas(raw) >= 1;
    await chat.sendMessage({ text: opts.message });
    reading = chat.resumeStream();
    await until(() => recorder.exchanges.length === 2 && textDeltas(recorder.exchanges[1].raw ?? '') >= 1, 'text in the resumed stream');
  } else {
    reading = chat.sendMessage({ text: opts.message });
    await until(() => textDeltas(recorder.exchanges[0]?.raw ?? '') >= 1, 'text in the stream');
  }
  const url = `${opts['base-url'].replace(/\/$/, '')}/api/chat/${opts['chat-id']}/stop`;
  const response = await fetch(url, { method: 'POST', headers: keyHeaders(opts) });
  const stop = { status: response.status, body: await response.json() };
  await reading;
  return report(chat, recorder, { stop });
});
