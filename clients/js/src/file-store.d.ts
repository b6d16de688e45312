import type { ImStore } from './index.js';

/** Node only: the state in one JSON file, replaced atomically on each write. */
export declare class FileStore implements ImStore {
  /** Reads path if it exists (a missing file is an empty state). */
  static open(path: string): Promise<FileStore>;
  constructor(path: string);
  readonly path: string;
  get(key: string): Promise<unknown>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
}
