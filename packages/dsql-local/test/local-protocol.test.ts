import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameSplitter, frame, isCommitStatement } from '../src/protocol.js';

describe('FrameSplitter', () => {
  it('reassembles any sequence of frames however the byte stream is cut', () => {
    const frameArb = fc.record({
      type: fc.constantFrom('Q', 'P', 'B', 'D', 'Z', 'E'),
      body: fc.uint8Array({ maxLength: 3000 }),
    });
    fc.assert(
      fc.property(
        fc.array(frameArb, { maxLength: 20 }),
        fc.array(fc.nat(4000), { maxLength: 30 }),
        (frames, cuts) => {
          const wire = Buffer.concat(frames.map((f) => frame(f.type, Buffer.from(f.body))));
          const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
          const splitter = new FrameSplitter(true);
          const got: { type: string; body: Buffer }[] = [];
          let prev = 0;
          for (const p of [...points, wire.length]) {
            for (const f of splitter.push(wire.subarray(prev, p)))
              got.push({ type: f.type, body: f.bytes.subarray(5) });
            prev = p;
          }
          expect(got.map((g) => g.type)).toEqual(frames.map((f) => f.type));
          for (const [i, g] of got.entries())
            expect(Buffer.compare(g.body, Buffer.from(frames[i]!.body))).toBe(0);
          expect(splitter.pendingBytes).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('rejects impossible lengths', () => {
    expect(() => new FrameSplitter(true).push(Buffer.from([0x51, 0, 0, 0, 2]))).toThrow(
      /invalid frame length/,
    );
  });
});

describe('statement classification', () => {
  it('COMMIT forms', () => {
    for (const sql of ['COMMIT', 'commit;', '  End  ', 'COMMIT WORK', 'commit transaction ;\n'])
      expect(isCommitStatement(sql)).toBe(true);
    for (const sql of ['COMMIT PREPARED x', 'SELECT 1; COMMIT', 'COMMIT AND CHAIN', 'ROLLBACK', 'ending'])
      expect(isCommitStatement(sql)).toBe(false);
  });
});
