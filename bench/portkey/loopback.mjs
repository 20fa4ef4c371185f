// Preloaded with `node --import` by bench/run.py: Portkey's start-server.js calls
// @hono/node-server's serve({fetch, port}) with no hostname, which listens on every
// interface. The benchmark must stay on loopback, so a listen() given only a port
// (or an options object without a host) is pinned to 127.0.0.1.
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
