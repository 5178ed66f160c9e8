"""The API surfaces: one module per API that clients speak (OpenAI, OpenAI Responses, Anthropic Messages, Ollama).

Each is an adapter: it reads its own request into the one internal chat request (an OpenAI chat body,
`ChatCompletionRequest`), runs it as one engine Job through `common.answer`, and writes the Job's stream (OpenAI
chat chunks: `delta.content`, `delta.tool_calls`, `finish_reason`, then `done` with the usage and the stop string
that ended the answer) out in its own shape, its errors in its own error shape. Routing, quotas, health,
decisions, metrics and experiments never know which surface a request came through, except that the decision log
and metrics record it.
"""
