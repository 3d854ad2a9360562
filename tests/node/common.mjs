// What every scenario shares: its options from argv (or the environment), a fetch that records the
// requests a client sends, and one JSON result on stdout for tests/test_node_clients.py to assert on.
import { parseArgs } from 'node:util';

/** The scenario's options: `--base-url` (the service, without /v1), `--model`, `--api-key`, flags. */
export function options(extra = {}) {
  const { values } = parseArgs({
    options: {
      'base-url': { type: 'string', default: process.env.SERVICE_URL },
      model: { type: 'string', default: process.env.SERVICE_MODEL ?? 'simulated' },
      'api-key': { type: 'string', default: process.env.SERVICE_API_KEY ?? 'unused' },
      ...extra,
    },
  });
  if (!values['base-url']) {
    throw new Error('give the service URL with --base-url or SERVICE_URL');
  }
  return { ...values, v1: `${values['base-url'].replace(/\/$/, '')}/v1` };
}

/**
 * A fetch for the clients' `fetch` option that keeps the JSON body of every request they send, so a
 * test can tell what the client asked for (tools, tool_choice, response_format, the tool messages).
 */
export function recordingFetch() {
  const requests = [];
  const recorder = async (input, init) => {
    const url = typeof input === 'string' ? input : input.url;
    let body = init?.body;
    if (typeof body === 'string') {
      try {
        body = JSON.parse(body);
      } catch {
        // not JSON: keep the text
      }
    }
    requests.push({ url, body: body ?? null });
    return fetch(input, init);
  };
  return { fetch: recorder, requests };
}

/** What a test needs to know about a failure: the error's class, message, HTTP status and body. */
export function describeError(error) {
  if (!(error instanceof Error)) {
    return { name: typeof error, message: String(error) };
  }
  const described = { name: error.name, message: error.message };
  for (const key of ['statusCode', 'status', 'responseBody', 'error', 'text', 'toolName', 'toolInput']) {
    if (error[key] !== undefined) {
      described[key] = error[key];
    }
  }
  if (error.cause !== undefined) {
    described.cause = describeError(error.cause);
  }
  return described;
}

/**
 * Run one scenario: its result (or its error) is printed as one JSON object, with the requests the
 * client sent; exit code 1 on error.
 */
export async function run(scenario, requests = []) {
  let result;
  try {
    result = { ok: true, ...(await scenario()), requests };
  } catch (error) {
    result = { ok: false, error: describeError(error), requests };
    process.exitCode = 1;
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
