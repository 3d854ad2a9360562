// An answer's state as the page keeps it: built from its stream events part by part (`addPart`), or
// from its `end` event or stored turn (`finished`). No DOM here.

export function emptyAnswer(state) {
  return { content: "", reasoning: "", refusal: "", calls: [], state, lastSeq: -1, done: false, note: "" };
}

// Adds one part's delta to a running answer; false for an event that is not a part.
export function addPart(answer, type, data) {
  switch (type) {
    case "chunk":
      answer.content += data.content || "";
      return true;
    case "reasoning":
      answer.reasoning += data.content || "";
      return true;
    case "refusal":
      answer.refusal += data.content || "";
      return true;
    case "tool_call_start":
      toolCall(answer, data.tool_call_id).name = data.name || "";
      return true;
    case "tool_call_delta":
      toolCall(answer, data.tool_call_id).arguments += data.arguments || "";
      return true;
    case "tool_call_end": {
      const call = toolCall(answer, data.tool_call_id);
      call.name = data.name || call.name;
      call.arguments = data.arguments || "";
      call.complete = true;
      return true;
    }
    default:
      return false;
  }
}

// The answer's call with this id, added (in the order calls start) if it is new.
function toolCall(answer, id) {
  let call = answer.calls.find((c) => c.id === id);
  if (!call) {
    call = { id: String(id), name: "", arguments: "", complete: false };
    answer.calls.push(call);
  }
  return call;
}

// An answer as it ended: from its `end` event, or from its turn in history (the same fields).
export function finished(message) {
  const notes = {
    stop: ["done", ""],
    tool_calls: ["done", ""],
    cancelled: ["cancelled", "Stopped"],
    length: ["done", "Cut short: the length limit was reached"],
    content_filter: ["done", "Cut short by the model's content filter"],
    shutdown: ["error", "Interrupted: the service restarted"],
    error: ["error", "Error: the answer failed"],
  };
  const [state, note] = notes[message.finish_reason] || ["done", ""];
  const calls = Array.isArray(message.tool_calls) ? message.tool_calls : [];
  return {
    content: message.content || "",
    reasoning: message.reasoning || "",
    refusal: message.refusal || "",
    calls: calls.map((c) => ({
      id: String(c.id),
      name: c.name || "",
      arguments: c.arguments || "",
      complete: true,
    })),
    state,
    finishReason: message.finish_reason,
    note,
    done: true,
    lastSeq: Infinity,
  };
}
