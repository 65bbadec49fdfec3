// Proxyless client for grpc_js_xds.rs: resolves an xds:/// target through the bootstrap in
// GRPC_XDS_BOOTSTRAP (our ADS server) and calls /test.Echo/Say (raw bytes, served by
// grpc_xds.py) `count` times, one RPC after the other, printing each reply on its own line.
//
//   node client.js <target> [count]     (GRPC_CALL_METADATA=name=value: a header on every call)
'use strict';

const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

xds.register();

const [target, countArg] = process.argv.slice(2);
const count = Number(countArg || 1);
const identity = (b) => b;
const client = new grpc.Client(target, grpc.credentials.createInsecure());
const extra = process.env.GRPC_CALL_METADATA || '';

function metadata() {
  const md = new grpc.Metadata({ waitForReady: true });
  if (extra) {
    const at = extra.indexOf('=');
    md.set(extra.slice(0, at), extra.slice(at + 1));
  }
  return md;
}

function say() {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 20000);
    client.makeUnaryRequest(
      '/test.Echo/Say',
      identity,
      identity,
      Buffer.from('hi'),
      metadata(),
      { deadline },
      (err, reply) => (err ? reject(err) : resolve(reply.toString())),
    );
  });
}

(async () => {
  const out = [];
  for (let i = 0; i < count; i++) {
    out.push(await say());
  }
  process.stdout.write(out.join('\n') + '\n');
  client.close();
  process.exit(0);
})().catch((err) => {
  process.stderr.write(`grpc-js-xds client failed: ${err.stack || err}\n`);
  process.exit(1);
});
