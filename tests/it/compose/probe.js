// The agent's side of tests/it/compose.rs, run in the agent container (podman exec) with
// Node's built-in fetch and net, which read no proxy variable: in routed mode the agent
// needs none. One JSON line per call.
//
//   probe.js fetch URL                      GET with fetch (NODE_EXTRA_CA_CERTS: the test CA)
//   probe.js connect HOST:PORT...           a direct TCP connection to each
//   probe.js connect-via PROXY TARGET       CONNECT TARGET through the proxy at PROXY
'use strict';
const net = require('net');

const split = (t) => {
  const i = t.lastIndexOf(':');
  return { host: t.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(t.slice(i + 1)) };
};

function connect(target) {
  return new Promise((resolve) => {
    const s = net.connect({ ...split(target), timeout: 3000 });
    const done = (result) => {
      s.destroy();
      resolve(result);
    };
    s.on('connect', () => done('connected'));
    s.on('timeout', () => done('timeout'));
    s.on('error', (e) => done(e.code || String(e)));
  });
}

function connectVia(proxy, target) {
  return new Promise((resolve) => {
    const s = net.connect({ ...split(proxy), timeout: 5000 });
    let reply = '';
    const done = (result) => {
      s.destroy();
      resolve(result);
    };
    s.on('connect', () => s.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`));
    s.on('data', (d) => {
      reply += d;
      if (reply.includes('\r\n')) done(reply.split('\r\n')[0]);
    });
    s.on('timeout', () => done('timeout'));
    s.on('error', (e) => done(e.code || String(e)));
    s.on('end', () => done(reply.split('\r\n')[0] || 'closed'));
  });
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === 'fetch') {
    try {
      const r = await fetch(args[0], { signal: AbortSignal.timeout(8000) });
      return { status: r.status, body: await r.text() };
    } catch (e) {
      const cause = e.cause || e;
      return { error: String(cause.code || cause.message || cause) };
    }
  }
  if (cmd === 'connect') {
    const results = {};
    for (const t of args) results[t] = await connect(t);
    return results;
  }
  if (cmd === 'connect-via') return { reply: await connectVia(args[0], args[1]) };
  throw new Error(`unknown command ${cmd}`);
}

main().then((r) => console.log(JSON.stringify(r)));
