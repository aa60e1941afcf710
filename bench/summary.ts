/**
 * Gathers bench/results/*.json into bench/results/summary.json (each file's description, when it
 * was measured, on which Node) and draws the charts a picture explains better than a table:
 * bench/results/warm-latency.svg (warm overhead per way of calling, per link latency) and
 * bench/results/coldstart.svg (init time against bare pg and the official connector). Run by `npm run bench`
 * after the benchmarks, or alone: `node --import tsx bench/summary.ts`.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const results = join(dirname(fileURLToPath(import.meta.url)), 'results');

/** One bar: a value, with an optional range drawn as a whisker. */
export interface Bar {
  label: string;
  value: number;
  low?: number;
  high?: number;
}
/** A group of bars sharing a label (e.g. one link latency). */
export interface BarGroup {
  label: string;
  bars: Bar[];
}

const xml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#76b7b2', '#b07aa1'];

/**
 * A grouped horizontal bar chart as a standalone SVG (no script, no external font), with an
 * optional reference line (e.g. a goal). Deterministic: the same input gives the same bytes.
 */
export function barChartSvg(options: {
  title: string;
  unit: string;
  groups: BarGroup[];
  reference?: { value: number; label: string };
}): string {
  const { title, unit, groups, reference } = options;
  const rowHeight = 18;
  const left = 170;
  const width = 720;
  const plotWidth = width - left - 90;
  const values = groups.flatMap((g) => g.bars.flatMap((b) => [b.value, b.low ?? b.value, b.high ?? b.value]));
  if (reference) values.push(reference.value);
  const min = Math.min(0, ...values);
  const max = Math.max(0, ...values);
  const span = max - min || 1;
  const x = (v: number) => left + ((v - min) / span) * plotWidth;
  const out: string[] = [];
  let y = 40;
  for (const group of groups) {
    out.push(`<text x="8" y="${y + 12}" font-weight="bold">${xml(group.label)}</text>`);
    y += rowHeight;
    group.bars.forEach((bar, i) => {
      const x0 = x(Math.min(0, bar.value));
      const w = Math.max(1, Math.abs(x(bar.value) - x(0)));
      out.push(`<text x="16" y="${y + 12}">${xml(bar.label)}</text>`);
      out.push(
        `<rect x="${x0.toFixed(1)}" y="${y + 2}" width="${w.toFixed(1)}" height="${rowHeight - 6}" fill="${PALETTE[i % PALETTE.length]}"/>`,
      );
      if (bar.low !== undefined && bar.high !== undefined) {
        const cy = y + rowHeight / 2 - 1;
        out.push(
          `<line x1="${x(bar.low).toFixed(1)}" x2="${x(bar.high).toFixed(1)}" y1="${cy}" y2="${cy}" stroke="#333"/>`,
        );
      }
      out.push(
        `<text x="${(Math.max(x(bar.value), x(0), x(bar.high ?? bar.value)) + 4).toFixed(1)}" y="${y + 12}">${bar.value}${xml(unit)}</text>`,
      );
      y += rowHeight;
    });
    y += 8;
  }
  const axis = `<line x1="${x(0).toFixed(1)}" x2="${x(0).toFixed(1)}" y1="32" y2="${y}" stroke="#999"/>`;
  const ref = reference
    ? `<line x1="${x(reference.value).toFixed(1)}" x2="${x(reference.value).toFixed(1)}" y1="32" y2="${y}" stroke="#e15759" stroke-dasharray="4 3"/>` +
      `<text x="${(x(reference.value) + 3).toFixed(1)}" y="${y + 12}" fill="#e15759">${xml(reference.label)}</text>`
    : '';
  const height = y + 24;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    '<rect width="100%" height="100%" fill="#fff"/>',
    `<text x="8" y="20" font-size="14" font-weight="bold">${xml(title)}</text>`,
    axis,
    ref,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}

interface WarmLatency {
  node: string;
  results: {
    latencyMsEachWay: number;
    roundTripMs: number;
    variants: Record<string, { overheadPct: number; overheadP25Pct: number; overheadP75Pct: number }>;
  }[];
}
interface ColdStart {
  results: { node: string; bundling: string; handler: string; bytes: number; initMs: number }[];
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readFileSync(join(results, file), 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export function summarize(): string[] {
  const written: string[] = [];
  const files = readdirSync(results)
    .filter((f) => f.endsWith('.json') && f !== 'summary.json')
    .sort();
  const summary = files.map((file) => {
    const data = readJson<Record<string, unknown>>(file) ?? {};
    return {
      file,
      description: typeof data.description === 'string' ? data.description : undefined,
      measuredAt: data.measuredAt ?? data.date ?? undefined,
      node: data.node ?? undefined,
    };
  });
  writeFileSync(join(results, 'summary.json'), `${JSON.stringify({ benchmarks: summary }, null, 2)}\n`);
  written.push('summary.json');

  const warmFile = ['warm-latency-node22.json', 'warm-latency-node20.json'].find((f) => readJson(f));
  const warm = warmFile ? readJson<WarmLatency>(warmFile) : undefined;
  if (warm) {
    const groups = warm.results.map((r) => ({
      label: `${r.latencyMsEachWay} ms each way (round trip ${r.roundTripMs} ms)`,
      bars: Object.entries(r.variants)
        .filter(([name]) => name !== 'bare pg.Pool')
        .map(([name, v]) => ({
          label: name,
          value: v.overheadPct,
          low: v.overheadP25Pct,
          high: v.overheadP75Pct,
        })),
    }));
    writeFileSync(
      join(results, 'warm-latency.svg'),
      barChartSvg({
        title: `Warm invocation overhead vs a bare pg.Pool (${warm.node}; median, whiskers: IQR of rounds)`,
        unit: ' %',
        groups,
        reference: { value: 5, label: 'goal 5 %' },
      }),
    );
    written.push('warm-latency.svg');
  }

  const cold = readJson<ColdStart>('coldstart.json');
  if (cold) {
    const groups: BarGroup[] = [];
    for (const node of [...new Set(cold.results.map((r) => r.node))]) {
      const rows = cold.results.filter((r) => r.node === node && r.bundling.startsWith('esbuild-defaults'));
      groups.push({
        label: `init time, ${node} (esbuild defaults, minified)`,
        bars: rows.map((r) => ({ label: r.handler, value: r.initMs })),
      });
    }
    writeFileSync(
      join(results, 'coldstart.svg'),
      barChartSvg({
        title: 'Cold start: init time of a handler creating a pool at module scope',
        unit: ' ms',
        groups,
      }),
    );
    written.push('coldstart.svg');
  }
  return written;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(
    `wrote ${summarize()
      .map((f) => `bench/results/${f}`)
      .join(', ')}`,
  );
}
