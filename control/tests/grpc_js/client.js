// Proxyless client for grpc_js_xds.rs: resolves an xds:/// target through the bootstrap in
// GRPC_XDS_BOOTSTRAP (our ADS server) and calls /test.Echo/Say (raw bytes, served by
// grpc_xds.py) `count` times, one RPC after the other, printing each reply on its own line.
//
//   node client.js <target> [count]     (GRPC_CALL_METADATA=name=value: a header on every call)
'use strict';

const http = require('http');
const fs = require('fs');

// With TRAFFIC_XDS_TOKEN_FILE set, the client presents that ServiceAccount token to the xDS server.
// grpc-js-xds 1.14 has neither `tls` channel creds nor `call_creds` in its bootstrap: it knows
// `insecure` and `google_default` only. `google_default` is TLS verified with gRPC's default roots
// (GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, which the caller points at the control plane's CA) plus
// Google application-default credentials, whose token can come from a GCE-style metadata
// endpoint (GCE_METADATA_HOST). So this process serves its token file on such an endpoint on
// loopback, re-reading the file on every fetch (a renewed token is picked up when the old one
// is within google-auth-library's refresh window of its `exp`).
function tokenEndpoint(tokenFile) {
  const server = http.createServer((req, res) => {
    if (req.headers['metadata-flavor'] !== 'Google') {
      res.writeHead(403).end();
      return;
    }
    const path = req.url.split('?')[0];
    res.setHeader('Metadata-Flavor', 'Google');
    if (path === '/computeMetadata/v1/instance') {
      res.end('{}');
    } else if (path === '/computeMetadata/v1/instance/service-accounts/default/token') {
      const token = fs.readFileSync(tokenFile, 'utf8').trim();
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ access_token: token, expires_in: secondsLeft(token), token_type: 'Bearer' }));
    } else {
      res.writeHead(404).end();
    }
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      server.unref();
      resolve(`127.0.0.1:${server.address().port}`);
    });
  });
}

// Seconds until the JWT's `exp` (60 when it has none or cannot be read).
function secondsLeft(jwt) {
  try {
    const claims = JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
    return Math.max(1, Math.floor(claims.exp - Date.now() / 1000));
  } catch (_) {
    return 60;
  }
}

const [target, countArg] = process.argv.slice(2);
const count = Number(countArg || 1);
const identity = (b) => b;
let grpc;
let client;
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
    const deadline = new Date(Date.now() + Number(process.env.TRAFFIC_CALL_TIMEOUT_MS || 20000));
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
  if (process.env.TRAFFIC_XDS_TOKEN_FILE) {
    process.env.GCE_METADATA_HOST = await tokenEndpoint(process.env.TRAFFIC_XDS_TOKEN_FILE);
  }
  grpc = require('@grpc/grpc-js');
  require('@grpc/grpc-js-xds').register();
  client = new grpc.Client(target, grpc.credentials.createInsecure());
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
