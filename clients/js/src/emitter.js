// A small event emitter the same in browsers and Node 18 (which has no
// global CustomEvent). A listener that throws does not stop the client:
// its error is thrown again on its own, as an uncaught exception.
export class Emitter {
  #handlers = new Map();

  /** Calls fn(detail) on each `type` event; returns a function that stops it. */
  on(type, fn) {
    let s = this.#handlers.get(type);
    if (!s) this.#handlers.set(type, s = new Set());
    s.add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) { this.#handlers.get(type)?.delete(fn); }

  /** Calls fn once, on the next `type` event. */
  once(type, fn) {
    const off = this.on(type, (d) => { off(); fn(d); });
    return off;
  }

  emit(type, detail) {
    const s = this.#handlers.get(type);
    if (!s) return;
    for (const fn of [...s]) {
      try {
        fn(detail);
      } catch (e) {
        setTimeout(() => { throw e; }, 0);
      }
    }
  }
}
