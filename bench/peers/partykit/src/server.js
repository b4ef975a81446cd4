// The system Ripple replaces: a PartyKit party running y-partykit with snapshot persistence
// (every update is written to Durable Object storage as it arrives; the log is merged into one
// snapshot when the last connection closes).
import { onConnect } from "y-partykit";

export default class YjsParty {
  constructor(room) {
    this.room = room;
  }

  onConnect(conn) {
    return onConnect(conn, this.room, { persist: { mode: "snapshot" } });
  }
}
