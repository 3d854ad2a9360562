// The AI SDK's own chat client in Node: `AbstractChat` (the class `useChat` drives) with the default
// transport, `DefaultChatTransport`, posting to the service's /api/chat. What the scenarios share: a
// plain chat state (what @ai-sdk/react keeps in React state), a fetch that records each response's
// status, headers and raw body and can drop a connection mid-answer, and one JSON result on stdout.
import { parseArgs } from 'node:util';
import { AbstractChat, DefaultChatTransport, uiMessageChunkSchema } from 'ai';

/** The scenario's options: `--base-url` (the service), `--api-key`, `--chat-id`. */
export function options(extra = {}) {
  const { values } = parseArgs({
    options: {
      'base-url': { type: 'string' },
      'api-key': { type: 'string' },
      'chat-id': { type: 'string' },
      ...extra,
    },
  });
  if (!values['base-url']) {
    throw new Error('give the service URL with --base-url');
  }
  return values;
}

/** The SDK's `ChatState` without a UI framework: what a chat holds, as @ai-sdk/react's state does. */
class PlainChatState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = 'ready';
    this.error = undefined;
  }

  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };

  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };

  replaceMessage = (index, message) => {
    this.messages = [...this.messages.slice(0, index), this.snapshot(message), ...this.messages.slice(index + 1)];
  };

  snapshot = (value) => structuredClone(value);
}

export class NodeChat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new PlainChatState(init.messages) });
  }
}

/**
 * A fetch that keeps, for every request, its method, URL and JSON body, and the response's status,
 * headers and raw text; `dropWhen(rawTextSoFar)` makes it drop that response's connection (the body
 * fails as a lost network does) once it returns true.
 */
export function recordingFetch() {
  const exchanges = [];
  const recorder = {
    exchanges,
    dropWhen: null,
    fetch: async (input, init = {}) => {
      const url = typeof input === 'string' ? input : input.url;
      const exchange = { method: init.method ?? 'GET', url, body: init.body ? JSON.parse(init.body) : null };
      exchanges.push(exchange);
      const response = await fetch(input, init);
      exchange.status = response.status;
      exchange.headers = Object.fromEntries(response.headers.entries());
      exchange.raw = '';
      if (!response.body) {
        return response;
      }
      const dropWhen = recorder.dropWhen;
      recorder.dropWhen = null; // one drop per arming
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      const body = new ReadableStream({
        async pull(controller) {
          const { done, value } = await reader.read();
          if (done) {
            exchange.raw += decoder.decode();
            controller.close();
            return;
          }
          exchange.raw += decoder.decode(value, { stream: true });
          controller.enqueue(value);
          if (dropWhen && dropWhen(exchange.raw)) {
            exchange.dropped = true;
            await reader.cancel(); // closes the connection: the service sees the client leave
            controller.error(new TypeError('network error: connection dropped by the test'));
          }
        },
        cancel: (reason) => reader.cancel(reason),
      });
      return new Response(body, { status: response.status, headers: response.headers });
    },
  };
  return recorder;
}

/** Each `data:` chunk of a recorded body, checked with the SDK's own `uiMessageChunkSchema`. */
export async function chunksOf(raw) {
  const schema = uiMessageChunkSchema();
  const chunks = [];
  const problems = [];
  const events = raw.split('\n\n').filter((event) => event.trim() !== '');
  for (const event of events) {
    const data = event
      .split('\n')
      .filter((line) => line.startsWith('data: '))
      .map((line) => line.slice(6))
      .join('\n');
    if (data === '' || data === '[DONE]') {
      continue;
    }
    const result = await schema.validate(JSON.parse(data));
    if (result.success) {
      chunks.push(result.value);
    } else {
      problems.push({ data, error: String(result.error) });
    }
  }
  return { chunks, problems, done: events.at(-1)?.trim() === 'data: [DONE]' };
}

/** The API key header, when the scenario has a key. */
export function keyHeaders(opts) {
  return opts['api-key'] ? { 'X-API-Key': opts['api-key'] } : {};
}

/**
 * A chat on the service's /api/chat through the default transport, with a recording fetch; `body`
 * goes into every request (the transport's own option), `init` to the chat (callbacks).
 */
export function openChat(opts, { body, ...init } = {}) {
  const recorder = recordingFetch();
  const transport = new DefaultChatTransport({
    api: `${opts['base-url'].replace(/\/$/, '')}/api/chat`,
    fetch: recorder.fetch,
    headers: keyHeaders(opts),
    body,
  });
  const chat = new NodeChat({ id: opts['chat-id'], transport, ...init });
  return { chat, recorder };
}

/** What a scenario reports of its chat: status, error, and the messages with their parts. */
export async function report(chat, recorder, extra = {}) {
  return {
    status: chat.status,
    error: chat.error?.message ?? null,
    messages: chat.messages,
    exchanges: await describeExchanges(recorder.exchanges),
    ...extra,
  };
}

/** How many `text-delta` chunks a raw body has so far. */
export function textDeltas(raw) {
  return (raw.match(/"type":"text-delta"/g) ?? []).length;
}

/** Wait until `condition()` holds, looking every 10 ms; fail after `timeoutMs` saying what. */
export async function until(condition, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** What a test needs of each exchange: method, path, status, the UI stream header, the chunks. */
export async function describeExchanges(exchanges) {
  const described = [];
  for (const exchange of exchanges) {
    const { chunks, problems, done } = await chunksOf(exchange.raw ?? '');
    described.push({
      method: exchange.method,
      path: new URL(exchange.url).pathname,
      status: exchange.status,
      streamHeader: exchange.headers?.['x-vercel-ai-ui-message-stream'] ?? null,
      body: exchange.body,
      dropped: exchange.dropped ?? false,
      chunks,
      problems,
      done,
    });
  }
  return described;
}

/** Run one scenario: its result (or error) printed as one JSON line; exit code 1 on error. */
export async function run(scenario) {
  let result;
  try {
    result = { ok: true, ...(await scenario()) };
  } catch (error) {
    result = { ok: false, error: { name: error?.name, message: String(error?.message ?? error), stack: error?.stack } };
    process.exitCode = 1;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
