/**
 * The SVG charts bench/summary.ts draws from the results: one bar per value, labels escaped,
 * negative values drawn left of the zero axis, the same input giving the same bytes.
 */
import { describe, expect, it } from 'vitest';
import { barChartSvg } from '../../bench/summary.js';

const chart = () =>
  barChartSvg({
    title: 'overhead <vs> bare & co',
    unit: ' %',
    groups: [
      {
        label: '1 ms',
        bars: [
          { label: 'a', value: 2, low: -1, high: 4 },
          { label: 'b', value: -3 },
        ],
      },
      { label: '5 ms', bars: [{ label: 'a', value: 1 }] },
    ],
    reference: { value: 5, label: 'goal 5 %' },
  });

describe('barChartSvg', () => {
  it('draws one bar per value, a whisker where a range is given, and the reference line', () => {
    const svg = chart();
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    // One background rect plus three bars.
    expect(svg.match(/<rect /g)).toHaveLength(4);
    expect(svg).toContain('stroke-dasharray'); // the goal
    expect(svg.match(/<line [^>]*stroke="#333"/g)).toHaveLength(1); // one whisker
  });

  it('escapes text and never emits script', () => {
    const svg = chart();
    expect(svg).toContain('overhead &lt;vs&gt; bare &amp; co');
    expect(svg).not.toMatch(/<script|<vs>/);
  });

  it('puts a negative bar left of the zero axis, a positive one right of it', () => {
    const svg = chart();
    const axis = Number(svg.match(/<line x1="([\d.]+)" x2="\1" y1="32"[^>]*stroke="#999"/)![1]);
    const bars = [...svg.matchAll(/<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"/g)].map((m) => ({
      x: Number(m[1]),
      w: Number(m[2]),
    }));
    const [a, b] = bars;
    expect(a!.x).toBeCloseTo(axis, 0); // 2 %: starts at zero
    expect(b!.x + b!.w).toBeCloseTo(axis, 0); // -3 %: ends at zero
  });

  it('is deterministic', () => {
    expect(chart()).toBe(chart());
  });
});
