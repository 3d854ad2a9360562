// The smallest useChat page: the chat id and the service's /api/chat come from the page's URL
// (`?chat=...&api=...`), `resume: true` reconnects to a running answer after a reload, and Stop asks
// the service to end the answer (the SDK's own stop() would only drop the connection).
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { useState } from 'react';
import { createRoot } from 'react-dom/client';

const params = new URLSearchParams(window.location.search);
const chatId = params.get('chat');
const api = params.get('api') ?? '/api/chat';
const transport = new DefaultChatTransport({ api });

function Part({ part }) {
  if (part.type === 'text') {
    return <p className="text">{part.text}</p>;
  }
  if (part.type === 'reasoning') {
    return (
      <details className="reasoning">
        <summary>Thinking</summary>
        {part.text}
      </details>
    );
  }
  return null;
}

function App() {
  const { messages, sendMessage, status, error } = useChat({ id: chatId, transport, resume: true });
  const [input, setInput] = useState('');
  const submit = (event) => {
    event.preventDefault();
    sendMessage({ text: input });
    setInput('');
  };
  return (
    <main>
      <p data-testid="status">{status}</p>
      {error && <p role="alert">{error.message}</p>}
      <ol>
        {messages.map((message) => (
          <li
            key={message.id}
            data-role={message.role}
            data-message-id={message.id}
            data-finish={message.metadata?.finishReason ?? ''}
          >
            {message.parts.map((part, index) => (
              <Part key={index} part={part} />
            ))}
          </li>
        ))}
      </ol>
      <form onSubmit={submit}>
        <input aria-label="Message" value={input} onChange={(event) => setInput(event.target.value)} />
        <button type="submit" disabled={status !== 'ready'}>
          Send
        </button>
      </form>
      <button type="button" onClick={() => fetch(`${api}/${chatId}/stop`, { method: 'POST' })}>
        Stop
      </button>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<App />);
