// A real socket.io-client 4.x for the Python tests: node js_client.mjs URL TOKEN MODE
// MODE "auth" passes the token as the connect-time auth; "emit" sends api_v3_connect after
// connecting. Every event received is printed as one JSON line {"event": ..., "data": ...};
// closing stdin closes the socket and ends the process.
import { io } from "socket.io-client";

const [url, token, mode] = process.argv.slice(2);
const socket = io(url, mode === "auth" ? { auth: { token_api_v3: token } } : {});
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
