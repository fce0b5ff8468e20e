// Server-Sent Events read with fetch() instead of EventSource, which cannot send the API key header: the
// response body is parsed into {event, data} as it arrives (the text/event-stream format, comments skipped).

/**
 * The events of a text/event-stream response, in order, as an async iterator of {event, data} (data is the
 * raw text; several data lines are joined by "\n"; the event name defaults to "message"). Ends when the
 * server closes the stream; leaving the loop early (break, return, throw) cancels the body.
 */
export async function* readEvents(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let carry = ""; // a chunk's last "\r" waits: the next may start with the "\n" of the same line end
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let text = carry + value;
      carry = text.endsWith("\r") ? "\r" : "";
      if (carry) text = text.slice(0, -1);
      buffer += text.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = parseBlock(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (event) yield event;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** One event block's fields; null for a block with no data (a comment, such as a keep-alive). */
function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { event, data: data.join("\n") } : null;
}
