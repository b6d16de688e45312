// mosquitto-im: instant messaging on MQTT with the mosquitto-im plugin, in
// browsers and Node >= 18. See README.md and docs/PROTOCOL.md.
export { ImClient, ImError, RECEIPT_TOPIC, changeTarget } from './client.js';
export { MemoryStore, LocalStorageStore, IndexedDBStore } from './stores.js';
export { FLAG, EVENT, STATUS, HAS_MEMBERSHIP, decodeFrame, storeIdOf, inflate, uuid, encode, decode, root }
  from './frame.js';
