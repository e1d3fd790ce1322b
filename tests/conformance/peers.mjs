// The `ws` peers for the Autobahn cases (tests/conformance/run.py starts them):
//   node peers.mjs echo              a server echoing every message; prints "listening PORT"
//   node peers.mjs client URL AGENT  the client side of a fuzzingserver run: echoes every
//                                    case's messages, then asks for the report
// Both offer permessage-deflate, so the compression cases run too. `ws` comes from
// tests/interop's node_modules (`npm ci` there).
import { createRequire } from 'node:module';
const require = createRequire(new URL('../interop/package.json', import.meta.url));
const { WebSocketServer, WebSocket } = require('ws');

const options = { perMessageDeflate: true, maxPayload: 64 * 1024 * 1024 };
const echo = (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));

// One connection to `url`; resolves with its close code once it has closed.
function session(url, onOpen) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, options);
    onOpen(ws);
    ws.on('error', () => {}); // the cases fail connections on purpose; 'close' follows
    ws.on('close', resolve);
  });
}

const [mode, url, agent] = process.argv.slice(2);
if (mode === 'echo') {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...options });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    echo(ws);
  });
  wss.on('listening', () => console.log(`listening ${wss.address().port}`));
} else if (mode === 'client') {
  let count = 0;
  await session(`${url}/getCaseCount`, (ws) => ws.on('message', (m) => { count = Number(m); }));
  if (!(count > 0)) {
    console.error(`no case count from ${url}/getCaseCount`);
    process.exit(1);
  }
  for (let i = 1; i <= count; i++) {
    await session(`${url}/runCase?case=${i}&agent=${agent}`, echo);
  }
  await session(`${url}/updateReports?agent=${agent}`, () => {});
  console.log(`ran ${count} cases`);
} else {
  console.error('usage: node peers.mjs echo | client URL AGENT');
  process.exit(2);
}
