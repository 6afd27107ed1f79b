// Adds "Authorization: Bearer $MCP_CONFORMANCE_BEARER" to every request the conformance suite
// sends to a loopback host: global fetch and undici.request share undici's global dispatcher
// (Symbol.for('undici.globalDispatcher.1')); the raw node:http requests are patched directly.
// Usage: node --import ./auth-preload.mjs node_modules/@modelcontextprotocol/conformance/dist/index.js server ...
import http from 'node:http';
import { Agent, setGlobalDispatcher } from 'undici';

const token = process.env.MCP_CONFORMANCE_BEARER;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);
const value = `Bearer ${token}`;

function hasAuth(headers) {
  if (!headers) return false;
  if (Array.isArray(headers)) {
    for (let i = 0; i < headers.length; i += 2) if (String(headers[i]).toLowerCase() === 'authorization') return true;
    return false;
  }
  return Object.keys(headers).some((k) => k.toLowerCase() === 'authorization');
}

function withAuth(headers) {
  if (hasAuth(headers)) return headers;
  if (!headers) return { authorization: value };
  if (Array.isArray(headers)) return [...headers, 'authorization', value];
  if (typeof headers[Symbol.iterator] === 'function' && !(headers.constructor === Object)) {
    return [...Array.from(headers).flat(), 'authorization', value];
  }
  return { ...headers, authorization: value };
}

if (token) {
  const interceptor = (dispatch) => (opts, handler) => {
    const origin = new URL(String(opts.origin));
    if (LOOPBACK.has(origin.hostname)) opts = { ...opts, headers: withAuth(opts.headers) };
    return dispatch(opts, handler);
  };
  setGlobalDispatcher(new Agent().compose(interceptor));
  const original = http.request;
  http.request = function (options, ...rest) {
    if (options && typeof options === 'object' && !(options instanceof URL) && LOOPBACK.has(options.hostname ?? options.host)) {
      options = { ...options, headers: withAuth(options.headers) };
    }
    return original.call(this, options, ...rest);
  };
}
