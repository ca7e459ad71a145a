// A real socket.io-client 4.x for the Python tests: node js_client.mjs URL TOKEN MODE [TRANSPORT]
// MODE "auth" passes the token as the connect-time auth; "emit" sends api_v3_connect after
// connecting. TRANSPORT "websocket" or "polling" uses that transport alone (default: the
// client's own choice, long-polling upgraded to a WebSocket). Every event received is printed as one JSON line {"event": ..., "data": ...};
// closing stdin closes the socket and ends the process.
import { io } from "socket.io-client";

const [url, token, mode, transport] = process.argv.slice(2);
const options = mode === "auth" ? { auth: { token_api_v3: token } } : {};
if (transport) options.transports = [transport];
const socket = io(url, options);
const out = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + "\n");

socket.on("connect", () => {
  out("connect", null);
  if (mode !== "auth") socket.emit("api_v3_connect", { token_api_v3: token });
});
socket.on("connect_error", (err) => out("connect_error", String(err.message)));
socket.on("disconnect", (reason) => out("disconnect", reason));
socket.onAny((event, data) => out(event, data));
process.stdin.on("end", () => socket.close());
process.stdin.resume();
