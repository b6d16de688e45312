// The page's mosquitto-im client: the npm package of clients/js (the client
// algorithm of docs/PROTOCOL.md section 7, MQTT v5 over WebSockets) with
// what is this page's: its state in localStorage under
// imweb/<user>@<broker>/ (tests/e2e clears that to start from nothing), and
// a client id per browser tab (sessionStorage): a tab is a device, with its
// own cursor and persistent session, and a reload stays the same device.
//
// The bare imports are mapped by index.html's import map to what serve.js
// serves: the package's src/, MQTT.js's browser build and protobufjs's.
import { ImClient, LocalStorageStore, uuid } from 'mosquitto-im';

export { FLAG } from 'mosquitto-im';

const ACK_SOON_MS = 200;      // a read goes out this soon after the user saw it

export function pageClient({ url, user, password }) {
  const key = `imweb/${user}@${url}/`;
  let cid = sessionStorage.getItem(key + 'cid');
  if (!cid) {
    cid = `web-${user}-${uuid().slice(0, 8)}`;
    sessionStorage.setItem(key + 'cid', cid);
  }
  return new ImClient({
    url, user, password: password || undefined, clientId: cid,
    store: new LocalStorageStore(key), namespace: '',
    ackDelayMs: ACK_SOON_MS, reconnectPeriod: 1000, connectTimeout: 5000,
  });
}
