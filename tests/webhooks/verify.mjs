// Verifies webhook messages with the standardwebhooks package (an
// implementation of the Standard Webhooks spec independent of payg's).
// Reads a JSON array from stdin: [{"secret", "body", "headers": {...}}];
// writes one JSON array: [{"ok": true, "payload": ...} | {"ok": false, "error"}].
import { Webhook } from "standardwebhooks";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map(({ secret, body, headers }) => {
  try {
    return { ok: true, payload: new Webhook(secret).verify(body, headers) };
  } catch (e) {
    return { ok: false, error: String(e && e.message ? e.message : e) };
  }
});
process.stdout.write(JSON.stringify(results));
