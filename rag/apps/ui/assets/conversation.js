// Only on the conversation, after shared.js: keep the newest text in view, and block empty questions in
// the browser (Send disabled, Enter ignored) - the server ignores them too.
let seenTurns = -1;
watch('value', () => {
  const conv = element.querySelector('.rag-conv');
  if (!conv) return;
  const turns = Number(conv.dataset.turns || 0), busy = conv.dataset.busy === '1';
  if (busy || turns !== seenTurns) {
    let box = element;  // the scrolling box is the component or one of its wrappers
    while (box && box !== document.body && !(box.scrollHeight > box.clientHeight + 2 && /auto|scroll/.test(getComputedStyle(box).overflowY))) box = box.parentElement;
    if (box && box !== document.body) box.scrollTop = box.scrollHeight;
  }
  seenTurns = turns;
});
const gate = () => {
  const box = document.querySelector('#rag-question textarea');
  const send = document.querySelector('#rag-send');
  if (!box || !send) { setTimeout(gate, 200); return; }
  const update = () => {
    const b = document.querySelector('#rag-question textarea'), s = document.querySelector('#rag-send');
    if (!b || !s) return;
    const empty = !b.value.trim();
    if (s.disabled !== empty) s.disabled = empty;
    s.setAttribute('aria-disabled', String(empty));
  };
  document.addEventListener('input', update, true);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && e.target.closest && e.target.closest('#rag-question') && !e.target.value.trim()) {
      e.preventDefault(); e.stopImmediatePropagation();
    }
  }, true);
  setInterval(update, 300);  // the box is also filled by examples and cleared by the app
  update();
};
gate();
