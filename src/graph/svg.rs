//! The graph as SVG, laid out by kemu itself (no Graphviz at run time) in four rows: the
//! router, the segments, the hosts grouped under their segment, the overlay. Text is
//! monospace, so a box's width follows from its longest line.

use svg::Document;
use svg::node::element::{Line, Rectangle, Text};

use super::{Graph, fill};

const FONT_SIZE: i64 = 13;
/// Width of one monospace character at FONT_SIZE (0.6 em, rounded up).
const CHAR_WIDTH: i64 = 8;
const LINE_HEIGHT: i64 = 17;
const PADDING: i64 = 8;
const MARGIN: i64 = 20;
/// Between hosts of a segment, and between the segments' groups.
const HOST_GAP: i64 = 16;
const GROUP_GAP: i64 = 40;
/// Between rows (room for the edge labels).
const ROW_GAP: i64 = 44;

/// A box of text lines at a place.
struct Placed {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    lines: Vec<String>,
    class: &'static str,
    dashed: bool,
}

impl Placed {
    fn new(lines: Vec<String>, class: &'static str) -> Placed {
        let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as i64;
        Placed {
            x: 0,
            y: 0,
            w: longest * CHAR_WIDTH + 2 * PADDING,
            h: lines.len() as i64 * LINE_HEIGHT + 2 * PADDING - 4,
            lines,
            class,
            dashed: false,
        }
    }
    fn top(&self) -> (i64, i64) {
        (self.x + self.w / 2, self.y)
    }
    fn bottom(&self) -> (i64, i64) {
        (self.x + self.w / 2, self.y + self.h)
    }
}

/// The graph as an SVG document.
pub fn svg(g: &Graph) -> String {
    let mut router = Placed::new(g.router_lines(), "router");
    let mut segments: Vec<Placed> = g
        .segments
        .iter()
        .map(|s| Placed::new(s.lines(), "segment"))
        .collect();
    let mut hosts: Vec<Placed> = g
        .hosts
        .iter()
        .map(|h| Placed::new(h.lines(), h.class()))
        .collect();
    let mut overlay = Placed::new(g.overlay.lines(), "overlay");
    overlay.dashed = true;

    // Rows, top to bottom.
    let title_y = MARGIN + FONT_SIZE;
    router.y = title_y + 16;
    let segment_y = router.y + router.h + ROW_GAP;
    let segment_h = segments.iter().map(|s| s.h).max().unwrap_or(0);
    let host_y = segment_y + segment_h + ROW_GAP;
    let host_h = hosts.iter().map(|h| h.h).max().unwrap_or(0);
    overlay.y = host_y + host_h + ROW_GAP;

    // Columns: each segment's hosts side by side, the segment centred above them.
    let mut x = MARGIN;
    for (s, seg) in g.segments.iter().enumerate() {
        let members: Vec<usize> = (0..g.hosts.len())
            .filter(|&h| g.hosts[h].segment == seg.name)
            .collect();
        let row: i64 = members.iter().map(|&h| hosts[h].w).sum::<i64>()
            + HOST_GAP * (members.len() as i64 - 1).max(0);
        let width = row.max(segments[s].w);
        let mut hx = x + (width - row) / 2;
        for &h in &members {
            hosts[h].x = hx;
            hosts[h].y = host_y;
            hx += hosts[h].w + HOST_GAP;
        }
        segments[s].x = x + (width - segments[s].w) / 2;
        segments[s].y = segment_y;
        x += width + GROUP_GAP;
    }
    let content = (x - GROUP_GAP - MARGIN).max(router.w).max(overlay.w);
    let title_w = g.title().chars().count() as i64 * CHAR_WIDTH;
    let width = content.max(title_w) + 2 * MARGIN;
    router.x = MARGIN + (content - router.w) / 2;
    overlay.x = MARGIN + (content - overlay.w) / 2;
    let height = overlay.y + overlay.h + MARGIN;

    let mut doc = Document::new()
        .set("width", width)
        .set("height", height)
        .set("viewBox", (0, 0, width, height))
        .set("font-family", "monospace")
        .set("font-size", FONT_SIZE)
        .add(
            Rectangle::new()
                .set("width", "100%")
                .set("height", "100%")
                .set("fill", "white"),
        )
        .add(
            Text::new(g.title())
                .set("x", MARGIN)
                .set("y", title_y)
                .set("font-weight", "bold"),
        );

    // Edges first, so that the boxes cover their ends.
    for (s, seg) in g.segments.iter().enumerate() {
        let (x1, y1) = router.bottom();
        let (x2, y2) = segments[s].top();
        doc = doc.add(edge((x1, y1), (x2, y2), false));
        doc = doc.add(
            Text::new(seg.gateway.to_string())
                .set("x", (x1 + x2) / 2 + 4)
                .set("y", (y1 + y2) / 2 + 4)
                .set("font-size", FONT_SIZE - 2),
        );
        for (h, host) in g.hosts.iter().enumerate() {
            if host.segment == seg.name {
                doc = doc.add(edge(segments[s].bottom(), hosts[h].top(), false));
            }
        }
    }
    for (h, host) in g.hosts.iter().enumerate() {
        if host.subnet.is_some() {
            doc = doc.add(edge(hosts[h].bottom(), overlay.top(), true));
        }
    }
    for placed in std::iter::once(&router)
        .chain(&segments)
        .chain(&hosts)
        .chain(std::iter::once(&overlay))
    {
        doc = doc.add(draw(placed));
    }
    format!("{doc}\n")
}

fn edge(from: (i64, i64), to: (i64, i64), dashed: bool) -> Line {
    let line = Line::new()
        .set("x1", from.0)
        .set("y1", from.1)
        .set("x2", to.0)
        .set("y2", to.1)
        .set("stroke", "#555");
    if dashed {
        line.set("stroke-dasharray", "5,4")
    } else {
        line
    }
}

fn draw(p: &Placed) -> svg::node::element::Group {
    let mut rect = Rectangle::new()
        .set("x", p.x)
        .set("y", p.y)
        .set("width", p.w)
        .set("height", p.h)
        .set("rx", 6)
        .set("fill", fill(p.class))
        .set("stroke", "#555");
    if p.dashed {
        rect = rect.set("stroke-dasharray", "5,4");
    }
    let mut group = svg::node::element::Group::new()
        .set("class", p.class)
        .add(rect);
    for (i, line) in p.lines.iter().enumerate() {
        let mut text = Text::new(line.as_str())
            .set("x", p.x + PADDING)
            .set("y", p.y + PADDING + FONT_SIZE + i as i64 * LINE_HEIGHT - 2);
        // The first line names the box.
        if i == 0 {
            text = text.set("font-weight", "bold");
        }
        group = group.add(text);
    }
    group
}
