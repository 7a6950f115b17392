#!/bin/sh
# Regenerates the bundled prompts: Mandarin and English speech from espeak-ng,
# music on hold from sox, all as 8 kHz mono 16-bit FLAC (small, lossless, and
# decoded by the same symphonia path as any operator's WAV/MP3/Ogg files).
#   apt-get install -y espeak-ng sox && sh sounds/generate.sh
# Real deployments replace these with recorded voices of the same names.
set -eu
cd "$(dirname "$0")"
say() { # say LANG NAME TEXT
    mkdir -p "$(dirname "$2")"
    espeak-ng -v "$1" -s 190 -w /tmp/yihaotong-say.wav "$3"
    sox /tmp/yihaotong-say.wav -r 8000 -c 1 -b 16 "$2.flac" norm -3
    rm -f /tmp/yihaotong-say.wav
}
say cmn common/invalid "输入有误，请重新输入。"
say cmn common/all-busy "坐席全忙，请稍后再拨。"
say cmn common/recorded "您的通话可能被录音。"
say cmn common/closed "现在是非工作时间。"
say cmn common/to-agent "自助服务暂不可用，正在转接人工。"
say cmn hotline/welcome "您好，一二三四五热线，正在为您转接。"
say cmn hotline/urgent-notice "紧急通知：受强降雨影响，部分道路临时封闭。"
say cmn market/welcome "一二三一五已并入一二三四五热线，正在为您转接。"
say cmn health/welcome "一二三二零卫生健康热线，正在为您转接。"
say cmn transport/welcome "一二三二八交通运输热线，正在为您转接。"
say cmn tax/welcome "一二三六六纳税服务热线，正在为您转接。"
say cmn urban/welcome "一二三一九已并入一二三四五热线，正在为您转接。"
say cmn hrss/welcome "欢迎致电一二三三三社保热线。"
say cmn hrss/menu "自助查询请按一，人工服务请按零。"
say cmn housing/welcome "欢迎致电一二三二九公积金热线。"
say cmn housing/menu "自助查询请按一，人工服务请按零。"
say cmn legacy/line-retired "本号码已停止受理。一二三四五请按一，值班室请按二。"
say cmn transition/now-12345 "本号码已并入一二三四五热线，今后请直接拨打一二三四五。正在为您转接。"
say cmn transition/dial-12345 "本号码已停止使用，请改拨一二三四五。现在转接请按一。"
say cmn survey/ask "您好，这里是一二三四五热线回访。对您反映问题的办理结果，满意请按一，基本满意请按二，不满意请按三，转人工请按零。"
say cmn survey/thanks "感谢您的评价，再见。"
say cmn rating/ask "请对本次通话服务进行评价：满意请按一，基本满意请按二，不满意请按三。"
say cmn rating/thanks "感谢您的评价，再见。"
say cmn agent/logged-in "已签入，开始接听。"
say cmn agent/on-break "已暂停接听。"
say cmn agent/logged-out "已签出。"
say cmn agent/ready "整理结束，可以接听。"
say cmn agent/failed "操作未成功。"
say cmn queue/next "您是下一位，请稍候。"
say cmn queue/ahead "您前面还有"
say cmn queue/callers "位来电在等候。"
say cmn queue/many "您前面的来电较多，请耐心等候。"
say cmn queue/wait "预计等待时间约"
say cmn queue/minutes "分钟。"
say cmn queue/wait-long "预计等待时间较长，请耐心等候。"
say cmn queue/callback-offer "如需保留排队位置并由我们回电，请按一。"
say cmn queue/callback-booked "已为您登记回电，轮到您时我们将回拨本号码，再见。"
n=1
for word in 一 二 三 四 五 六 七 八 九 十 十一 十二 十三 十四 十五 十六 十七 十八 十九 二十; do
    say cmn "number/$n" "$word"
    n=$((n + 1))
done
say en english/welcome "Welcome to the twelve three four five citizen hotline."
say en english/menu "For an English speaking agent, press 1. To hear this again, press star."
say en english/invalid "Sorry, that key is not valid."
say en english/rating-ask "Please rate this call. Press 1 if satisfied, 2 if fairly satisfied, 3 if not satisfied."
# Music on hold: a slow arpeggio (C, Am, F, G), 8 seconds, looped by the player.
mkdir -p common
notes=""
i=0
for n in C4 E4 G4 E4 A3 C4 E4 C4 F3 A3 C4 A3 G3 B3 D4 B3; do
    sox -n -r 8000 -c 1 -b 16 "/tmp/yihaotong-note-$i.wav" synth 0.5 pluck "$n" fade 0 0.5 0.1
    notes="$notes /tmp/yihaotong-note-$i.wav"
    i=$((i + 1))
done
# shellcheck disable=SC2086
sox $notes common/hold-music.flac gain -n -12
rm -f $notes
