// The page's behaviour in the browser, attached (Gradio `js_on_load`) to the conversation, the sources and
// the paper view. Event delegation on the component, so it survives re-renders. Citations and the sources
// of earlier answers are shown without a server round trip; buttons that change state go to Python as
// `select` (quick: ratings, open a paper) or `submit` (answering: regenerate, ask as new, more) events with
// a JSON payload. `element`, `trigger` and `watch` are provided by Gradio's gr.HTML.
window.ragShowSource = window.ragShowSource || function (t, n) {
  const side = document.querySelector('#rag-side');
  const narrow = !side || side.offsetParent === null;
  document.querySelectorAll('.rag-target').forEach(e => e.classList.remove('rag-target'));
  let card = null;
  if (!narrow) {
    window.ragShowTurn(t);
    card = document.getElementById(`src-${t}-${n}`);
  }
  if (!card) {
    const det = document.querySelector(`#turn-${t} details.rag-inline-sources`);
    if (det) det.open = true;
    card = document.getElementById(`src-${t}-${n}-m`);
  }
  if (!card) return;
  card.classList.add('rag-target');
  card.scrollIntoView({block: 'nearest'});
  card.focus({preventScroll: true});
  history.replaceState(null, '', `#src-${t}-${n}`);
};
window.ragShowTurn = window.ragShowTurn || function (t) {
  const panel = document.querySelector('#rag-sources .rag-sources');
  if (!panel) return;
  panel.dataset.turn = t;
  panel.querySelectorAll('section.rag-turn-src').forEach(s => s.classList.toggle('active', s.dataset.turn == String(t)));
  panel.querySelectorAll('.rag-src-nav button').forEach(b => b.classList.toggle('active', b.dataset.show == String(t)));
};
window.ragCopy = window.ragCopy || async function (text, btn) {
  window.ragLastCopy = text;
  let ok = false;
  try { await navigator.clipboard.writeText(text); ok = true; } catch (e) {
    const ta = document.createElement('textarea');
    ta.value = text; ta.style.position = 'fixed'; ta.style.opacity = '0';
    document.body.appendChild(ta); ta.select();
    try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
    ta.remove();
  }
  if (btn) { const old = btn.textContent; btn.textContent = ok ? 'Copied' : 'Copy failed'; setTimeout(() => { btn.textContent = old; }, 1500); }
};
const ragHandle = (e) => {
  const cite = e.target.closest('a.rag-cite');
  if (cite) { e.preventDefault(); window.ragShowSource(cite.dataset.turn, cite.dataset.n); return; }
  const show = e.target.closest('button[data-show]');
  if (show) { window.ragShowTurn(show.dataset.show); return; }
  const el = e.target.closest('[data-action]');
  if (!el) return;
  e.preventDefault();
  const action = el.dataset.action, turn = Number(el.dataset.turn || 0);
  if (action === 'copy') { window.ragCopy(el.dataset.md || '', el); return; }
  let arg = '';
  if (action === 'open-paper') arg = el.dataset.pid || '';
  if (action === 'comment') { const box = el.closest('.rag-comment'); arg = box ? (box.querySelector('textarea') || {}).value || '' : ''; }
  const payload = JSON.stringify({action, turn, arg});
  if (['regenerate', 'ask-new', 'more'].includes(action)) {
    const conv = document.querySelector('#rag-conv .rag-conv');
    if (conv && conv.dataset.busy === '1') return;  // one answer at a time
    trigger('submit', {value: payload});
  } else {
    trigger('select', {value: payload, index: 0});
  }
};
element.addEventListener('click', ragHandle);
