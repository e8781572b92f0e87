// A TypeScript plugin's use of the types generated from schemas/ (json-schema-to-typescript
// into ./generated), type-checked with `tsc --strict`: requests take any JSON value, replies
// discriminate on `success`, and the error code is a closed union.
import type { RoseyDbKvSetRequest } from './generated/rosey.db.kv.set.request';
import type { RoseyDbKvGetRequest } from './generated/rosey.db.kv.get.request';
import type { RoseyDbKvGetSuccessReply } from './generated/rosey.db.kv.get.response';
import type { RoseyDbKvGetErrorReply } from './generated/rosey.db.kv.get.error';
import type { RoseyDbKvListRequest } from './generated/rosey.db.kv.list.request';
import type { RoseyDbKvListSuccessReply } from './generated/rosey.db.kv.list.response';
import type { RoseyDbKvSetErrorReply } from './generated/rosey.db.kv.set.error';

const values: unknown[] = ['text', 42, 12.5, true, null, [1, 'two'], { theme: 'dark' }];
export const sets: RoseyDbKvSetRequest[] = values.map((value, i) => ({
  plugin_name: 'my-plugin',
  key: `k${i}`,
  value,
  ...(i === 0 ? { ttl_seconds: 3600 } : {}),
}));
export const get: RoseyDbKvGetRequest = { plugin_name: 'my-plugin', key: 'k0' };
export const list: RoseyDbKvListRequest = { plugin_name: 'my-plugin', prefix: 'k', limit: 100 };

export function valueOf(reply: RoseyDbKvGetSuccessReply | RoseyDbKvGetErrorReply): unknown {
  if (reply.success) {
    // `value` is absent for a missing key, present (maybe null) for a stored one.
    return reply.data.exists ? reply.data.value : undefined;
  }
  const retry: boolean = reply.error.code === 'OVERLOADED' || reply.error.code === 'INTERNAL_ERROR';
  throw new Error(`${reply.error.code}${retry ? ' (retry)' : ''}: ${reply.error.message}`);
}

export function keys(reply: RoseyDbKvListSuccessReply): string[] {
  return reply.data.truncated ? [...reply.data.keys, '…'] : reply.data.keys;
}

export function tooLarge(reply: RoseyDbKvSetErrorReply): boolean {
  return reply.error.code === 'VALUE_TOO_LARGE';
}
