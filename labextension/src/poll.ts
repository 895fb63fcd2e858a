import { Poll } from '@lumino/polling';

/** Every `interval` ms (`Poll.NEVER`: only when asked); after a failure, backing off up to a minute. */
export function pollFrequency(interval: number): { interval: number; backoff: boolean; max: number } {
  return { interval, backoff: true, max: interval === Poll.NEVER ? 60_000 : Math.max(60_000, interval) };
}
