// The `local-model` import, provided by this JS host. A real host would
// call a model here; the example answers from the prompt so the output is
// checkable. One result per request, in order, as the WIT contract says.
export function generate(requests) {
  return requests.map((request) => {
    const text = `local: ${request.prompt}`;
    return {
      tag: 'ok',
      val: {
        text,
        finishReason: 'stop',
        inputTokens: request.prompt.split(/\s+/).length,
        outputTokens: text.split(/\s+/).length,
      },
    };
  });
}
