import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";
import { duration } from "../format.js";

/** A server's lag over time (uPlot); `samples` oldest first. */
export function LagChart(props: { samples: { at: string; lagSeconds: number | null }[] }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const data: uPlot.AlignedData = [
      props.samples.map((s) => Date.parse(s.at) / 1000),
      props.samples.map((s) => s.lagSeconds),
    ];
    if (plot.current === null) {
      plot.current = new uPlot(
        {
          width: Math.max(300, el.clientWidth),
          height: 220,
          legend: { show: false },
          cursor: { y: false },
          scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] } },
          axes: [
            { stroke: "#5b6472", grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e3e6ea" } },
            {
              stroke: "#5b6472",
              grid: { stroke: "#eef0f3" },
              ticks: { stroke: "#e3e6ea" },
              size: 60,
              values: (_u, vals) => vals.map((v) => duration(v)),
            },
          ],
          series: [
            {},
            {
              label: "Lag",
              stroke: "#2563eb",
              width: 2,
              fill: "rgba(37, 99, 235, 0.10)",
              points: { show: props.samples.length < 40 },
            },
          ],
        },
        data,
        el,
      );
    } else plot.current.setData(data);
  }, [props.samples]);
  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() =>
      plot.current?.setSize({ width: Math.max(300, el.clientWidth), height: 220 }),
    );
    ro.observe(el);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
      plot.current = null;
    };
  }, []);
  return <div class="chart" ref={box} />;
}
