// What every AG-UI scenario shares: its options from argv, an HttpAgent on the service's /agui (and
// one that can reconnect), a subscriber that records every event the client applied, and one JSON
// result on stdout for tests/test_agui_client.py to assert on.
import { parseArgs } from 'node:util';
import { HttpAgent, runHttpRequest, transformHttpEventStream } from '@ag-ui/client';

/** The scenario's options: `--base-url` (the service), `--thread`, `--api-key`, and its own. */
export function options(extra = {}) {
  const { values } = parseArgs({
    options: {
      'base-url': { type: 'string' },
      thread: { type: 'string' },
      'api-key': { type: 'string', default: '' },
      ...extra,
    },
  });
  if (!values['base-url'] || !values.thread) {
    throw new Error('give the service URL with --base-url and the thread with --thread');
  }
  return values;
}

/**
 * HttpAgent as its docs show it, plus the reconnect the protocol leaves to each server: `connect()`
 * (which `connectAgent()` calls, and HttpAgent does not implement) posts the same RunAgentInput to
 * `<url>/connect` and reads the answer with the client's own SSE reader.
 */
export class ReconnectingHttpAgent extends HttpAgent {
  connect(input) {
    return transformHttpEventStream(
      runHttpRequest(() => this.fetch(`${this.url}/connect`, this.requestInit(input))),
    );
  }
}

export function agent(opts) {
  const headers = opts['api-key'] ? { 'X-API-Key': opts['api-key'] } : {};
  return new ReconnectingHttpAgent({
    url: `${opts['base-url'].replace(/\/$/, '')}/agui`,
    threadId: opts.thread,
    headers,
  });
}

/** A subscriber that keeps every event the client verified and applied, in order. */
export function recorder() {
  const events = [];
  return { events, subscriber: { onEvent: ({ event }) => void events.push(event) } };
}

function describeError(error) {
  if (!(error instanceof Error)) {
    return { name: typeof error, message: String(error) };
  }
  const described = { name: error.name, message: error.message };
  for (const key of ['status', 'payload', 'code']) {
    if (error[key] !== undefined) {
      described[key] = error[key];
    }
  }
  return described;
}

/** Run one scenario: its result (or its error) as one JSON object on stdout; exit code 1 on error. */
export async function run(scenario) {
  let result;
  try {
    result = { ok: true, ...(await scenario()) };
  } catch (error) {
    result = { ok: false, error: describeError(error) };
    process.exitCode = 1;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
