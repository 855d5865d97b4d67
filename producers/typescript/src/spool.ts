/**
 * A bounded, append-only spool on local disk for Kafka records the broker could not take yet. Same on-disk format
 * as `producers/spool.py` (one format, documented there):
 *
 *     <dir>/0000000000000000000N.seg  "FINSPL01" then records: u32 body_length | u32 crc32(body) | body
 *                                     body = i64 timestamp_ms | u16 key_len | u32 value_len | u8 event_id_len |
 *                                            key | value | event_id
 *     <dir>/cursor                    "<segment> <offset> <index>": the first record not yet acknowledged
 *     <dir>/LOCK.pid                  the pid of the process that has the spool open (one owner at a time)
 *
 * Guarantees: records are read back in append order; `append` returns once the record is in the page cache (one
 * synchronous write, so it survives the process dying) and fsyncs on `sync()`/`close()`; the bytes of all
 * segments never exceed `maxBytes` (an append past it throws {@link SpoolFull}: the caller always learns); a torn
 * tail record (crash mid-write) is truncated on open; `read` hands out records ahead of the cursor and only
 * `commit` moves it, after Kafka acknowledged them (at-least-once: a crash in between re-sends, same event_id).
 * Synchronous file I/O on purpose: the spool is only written while the broker is away, and ordering with the
 * send path is trivial when an append cannot interleave with another.
 */

import {
  closeSync, existsSync, fstatSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync,
  statSync, truncateSync, unlinkSync, writeFileSync, writeSync,
} from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";

import { FinopsError } from "./errors.js";

export const SEGMENT_MAGIC = Buffer.from("FINSPL01");
const HEAD = 8;
const BODY = 15; // i64 + u16 + u32 + u8
const MAX_RECORD = 64 * 1024 * 1024;

export class SpoolError extends FinopsError {}

/** The spool reached `maxBytes`; the record was NOT stored. */
export class SpoolFull extends SpoolError {
  constructor(message: string, readonly eventId: string) {
    super(message);
  }
}

/** Another live process has this spool directory open. */
export class SpoolLocked extends SpoolError {}

export interface SpoolPosition {
  segment: number;
  offset: number;
  index: number;
}

export interface SpoolRecord {
  key: Buffer;
  value: Buffer;
  eventId: string;
  timestampMs: number;
  /** The position right after this record: commit it once the record is acknowledged. */
  end: SpoolPosition;
}

function segmentName(n: number): string {
  return `${String(n).padStart(20, "0")}.seg`;
}

function encodeRecord(key: Buffer, value: Buffer, eventId: string, timestampMs: number): Buffer {
  const eid = Buffer.from(eventId, "utf8");
  if (key.length > 0xffff) throw new SpoolError(`spool record key is ${key.length} bytes; at most 65535 are supported`);
  if (eid.length > 0xff) throw new SpoolError(`spool record event_id is ${eid.length} bytes; at most 255 are supported`);
  const body = Buffer.alloc(BODY + key.length + value.length + eid.length);
  body.writeBigInt64BE(BigInt(timestampMs), 0);
  body.writeUInt16BE(key.length, 8);
  body.writeUInt32BE(value.length, 10);
  body.writeUInt8(eid.length, 14);
  key.copy(body, BODY);
  value.copy(body, BODY + key.length);
  eid.copy(body, BODY + key.length + value.length);
  const head = Buffer.alloc(HEAD);
  head.writeUInt32BE(body.length, 0);
  head.writeUInt32BE(crc32(body), 4);
  return Buffer.concat([head, body]);
}

/** Parses the record at `pos`, or returns null when the bytes there are not a whole valid record. */
function parseRecord(buf: Buffer, pos: number): { key: Buffer; value: Buffer; eventId: string; ts: number; next: number } | null {
  if (buf.length - pos < HEAD) return null;
  const length = buf.readUInt32BE(pos);
  const crc = buf.readUInt32BE(pos + 4);
  if (length < BODY || length > MAX_RECORD || pos + HEAD + length > buf.length) return null;
  const body = buf.subarray(pos + HEAD, pos + HEAD + length);
  if (crc32(body) !== crc) return null;
  const ts = Number(body.readBigInt64BE(0));
  const klen = body.readUInt16BE(8);
  const vlen = body.readUInt32BE(10);
  const elen = body.readUInt8(14);
  if (BODY + klen + vlen + elen !== length) return null;
  return {
    ts,
    key: Buffer.from(body.subarray(BODY, BODY + klen)),
    value: Buffer.from(body.subarray(BODY + klen, BODY + klen + vlen)),
    eventId: body.subarray(BODY + klen + vlen).toString("utf8"),
    next: pos + HEAD + length,
  };
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface SpoolOptions {
  /** Bytes of one segment file before a new one starts (default: maxBytes / 8, 4 KiB .. 64 MiB). */
  segmentBytes?: number;
}

/** The on-disk spool (format and guarantees: module comment). */
export class Spool {
  readonly segmentBytes: number;
  /** Bytes of a torn tail dropped when opening (the crash happened before the append returned). */
  truncatedBytes = 0;
  private cursor: SpoolPosition;
  private readPos: SpoolPosition;
  private nextIndex: number;
  private tail: number;
  private tailFd: number;
  private tailSize: number;
  private diskBytes: number;
  private closed = false;
  private readonly lockPath: string;

  constructor(readonly directory: string, readonly maxBytes: number, options: SpoolOptions = {}) {
    if (maxBytes < 1024) throw new SpoolError(`spool maxBytes must be at least 1024, got ${maxBytes}`);
    this.segmentBytes = options.segmentBytes ?? Math.max(4096, Math.min(64 * 1024 * 1024, Math.floor(maxBytes / 8)));
    mkdirSync(directory, { recursive: true });
    this.lockPath = join(directory, "LOCK.pid");
    this.lock();
    try {
      const segments = this.segments();
      let cursor = this.loadCursor();
      if (segments.length === 0) {
        const first = cursor?.segment ?? 0;
        this.newSegment(first);
        segments.push(first);
        cursor = { segment: first, offset: SEGMENT_MAGIC.length, index: cursor?.index ?? 0 };
      } else if (!cursor || !segments.includes(cursor.segment)) {
        const later = segments.filter((s) => !cursor || s >= cursor.segment);
        cursor = { segment: (later[0] ?? segments[0]) as number, offset: SEGMENT_MAGIC.length, index: cursor?.index ?? 0 };
      }
      const start = cursor;
      for (const seg of segments.filter((s) => s < start.segment)) rmSync(this.path(seg), { force: true });
      const live = segments.filter((s) => s >= start.segment);
      let count = 0;
      live.forEach((seg, i) => {
        count += this.scan(seg, seg === start.segment ? start.offset : SEGMENT_MAGIC.length, i === live.length - 1);
      });
      this.cursor = cursor;
      this.readPos = cursor;
      this.nextIndex = cursor.index + count;
      this.tail = live[live.length - 1] as number;
      this.tailFd = openSync(this.path(this.tail), "a");
      this.tailSize = fstatSync(this.tailFd).size;
      this.diskBytes = live.reduce((sum, s) => sum + statSync(this.path(s)).size, 0);
      this.saveCursor(cursor);
    } catch (err) {
      this.unlock();
      throw err;
    }
  }

  private lock(): void {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(this.lockPath, String(process.pid), { flag: "wx" });
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
        const pid = Number(readFileSync(this.lockPath, "utf8").trim());
        if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && pidAlive(pid)) {
          throw new SpoolLocked(`spool directory ${this.directory} is in use by process ${pid}; give each producer ` +
            "process its own directory (spoolDir)");
        }
        if (pid === process.pid) {
          throw new SpoolLocked(`spool directory ${this.directory} is already open in this process`);
        }
        unlinkSync(this.lockPath); // left by a dead process
      }
    }
    throw new SpoolLocked(`could not lock ${this.directory}`);
  }

  private unlock(): void {
    rmSync(this.lockPath, { force: true });
  }

  private segments(): number[] {
    return readdirSync(this.directory)
      .filter((name) => /^\d{20}\.seg$/.test(name))
      .map((name) => Number(name.slice(0, 20)))
      .sort((a, b) => a - b);
  }

  private path(segment: number): string {
    return join(this.directory, segmentName(segment));
  }

  private loadCursor(): SpoolPosition | null {
    const file = join(this.directory, "cursor");
    if (!existsSync(file)) return null;
    const parts = readFileSync(file, "utf8").trim().split(/\s+/).map(Number);
    if (parts.length !== 3 || parts.some((n) => !Number.isInteger(n))) {
      throw new SpoolError(`${file} is unreadable; inspect the .seg files or delete the directory`);
    }
    return { segment: parts[0] as number, offset: parts[1] as number, index: parts[2] as number };
  }

  private saveCursor(cursor: SpoolPosition): void {
    const file = join(this.directory, "cursor");
    const tmp = `${file}.tmp`;
    const fd = openSync(tmp, "w");
    try {
      writeSync(fd, `${cursor.segment} ${cursor.offset} ${cursor.index}`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  }

  private scan(segment: number, start: number, isTail: boolean): number {
    const data = readFileSync(this.path(segment));
    if (!data.subarray(0, SEGMENT_MAGIC.length).equals(SEGMENT_MAGIC)) {
      throw new SpoolError(`${this.path(segment)} does not start with the spool magic; move it out of ${this.directory}`);
    }
    let pos = Math.max(start, SEGMENT_MAGIC.length);
    let count = 0;
    while (pos < data.length) {
      const record = parseRecord(data, pos);
      if (!record) {
        if (!isTail) throw new SpoolError(`${this.path(segment)}: damaged record at byte ${pos} in a segment that is not the last`);
        this.truncatedBytes += data.length - pos;
        truncateSync(this.path(segment), pos);
        break;
      }
      pos = record.next;
      count += 1;
    }
    return count;
  }

  private newSegment(n: number): void {
    const fd = openSync(this.path(n), "wx");
    try {
      writeSync(fd, SEGMENT_MAGIC);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Records stored and not yet committed. */
  get pending(): number {
    return this.nextIndex - this.cursor.index;
  }

  /** Bytes of all segment files (what `maxBytes` bounds). */
  get bytes(): number {
    return this.diskBytes;
  }

  /** Stores one record at the end. Throws {@link SpoolFull} when it would cross `maxBytes` (nothing stored). */
  append(key: Buffer, value: Buffer, eventId: string, timestampMs: number = Date.now()): void {
    this.checkOpen();
    const data = encodeRecord(key, value, eventId, timestampMs);
    const roll = this.tailSize > SEGMENT_MAGIC.length && this.tailSize + data.length > this.segmentBytes;
    const needed = data.length + (roll ? SEGMENT_MAGIC.length : 0);
    if (this.diskBytes + needed > this.maxBytes) {
      throw new SpoolFull(
        `spool ${this.directory} is full (${this.diskBytes} of ${this.maxBytes} bytes, ${this.pending} events ` +
          `waiting for the broker): event ${eventId} was NOT stored; raise spoolMaxBytes or restore the broker connection`,
        eventId,
      );
    }
    if (roll) {
      fsyncSync(this.tailFd);
      closeSync(this.tailFd);
      this.tail += 1;
      this.newSegment(this.tail);
      this.tailFd = openSync(this.path(this.tail), "a");
      this.tailSize = SEGMENT_MAGIC.length;
      this.diskBytes += SEGMENT_MAGIC.length;
    }
    const written = writeSync(this.tailFd, data);
    if (written !== data.length) {
      throw new SpoolError(`short write to ${this.path(this.tail)}: is the disk full? event ${eventId} was not stored`);
    }
    this.tailSize += data.length;
    this.diskBytes += data.length;
    this.nextIndex += 1;
  }

  /** Up to `max` records after those already handed out (ahead of the cursor), in order. */
  read(max: number): SpoolRecord[] {
    this.checkOpen();
    const out: SpoolRecord[] = [];
    let pos = this.readPos;
    while (out.length < max && pos.index < this.nextIndex) {
      const data = readFileSync(this.path(pos.segment));
      let offset = pos.offset;
      while (out.length < max && offset < data.length) {
        const record = parseRecord(data, offset);
        if (!record) throw new SpoolError(`${this.path(pos.segment)}: damaged record at byte ${offset}`);
        offset = record.next;
        pos = { segment: pos.segment, offset, index: pos.index + 1 };
        out.push({ key: record.key, value: record.value, eventId: record.eventId, timestampMs: record.ts, end: pos });
      }
      if (offset >= data.length && pos.segment < this.tail) {
        pos = { segment: pos.segment + 1, offset: SEGMENT_MAGIC.length, index: pos.index };
      } else if (offset >= data.length) {
        break;
      }
    }
    this.readPos = pos;
    return out;
  }

  /** Hands out records again from the cursor (after a failed send of a read batch). */
  rewind(): void {
    this.readPos = this.cursor;
  }

  /** Moves the cursor to `position` (acknowledged) and frees whole segments before it. */
  commit(position: SpoolPosition): void {
    this.checkOpen();
    this.saveCursor(position);
    for (let seg = this.cursor.segment; seg < position.segment; seg++) {
      const path = this.path(seg);
      if (existsSync(path)) {
        this.diskBytes -= statSync(path).size;
        unlinkSync(path);
      }
    }
    this.cursor = position;
    if (this.readPos.index < position.index) this.readPos = position;
    if (this.pending === 0 && this.tail === position.segment && position.offset === this.tailSize &&
      this.tailSize > SEGMENT_MAGIC.length) {
      // Everything acknowledged: start a fresh segment so the bytes are freed (the bound counts files).
      closeSync(this.tailFd);
      const old = this.tail;
      this.tail += 1;
      this.newSegment(this.tail);
      this.tailFd = openSync(this.path(this.tail), "a");
      this.tailSize = SEGMENT_MAGIC.length;
      this.cursor = { segment: this.tail, offset: SEGMENT_MAGIC.length, index: position.index };
      this.readPos = this.cursor;
      this.saveCursor(this.cursor);
      this.diskBytes -= statSync(this.path(old)).size;
      unlinkSync(this.path(old));
      this.diskBytes += SEGMENT_MAGIC.length;
    }
  }

  /** fsyncs the tail segment. */
  sync(): void {
    if (!this.closed) fsyncSync(this.tailFd);
  }

  close(): void {
    if (this.closed) return;
    this.sync();
    closeSync(this.tailFd);
    this.closed = true;
    this.unlock();
  }

  private checkOpen(): void {
    if (this.closed) throw new SpoolError(`spool ${this.directory} is closed`);
  }
}
